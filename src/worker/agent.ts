import { EventEmitter } from 'node:events';
import * as v from 'valibot';
import {
  CloseCode,
  toValidationIssues,
  type RegisterWorkerBodySchema,
} from '../../proto/index.ts';
import { RegistrationError, SessionError } from './errors.ts';
import {
  withTrailingSlash,
  WorkerSession,
  type AppliedInfo,
  type HeartbeatStats,
  type MismatchInfo,
  type SessionEnd,
} from './session.ts';
import type { RouteTable } from './table.ts';

/** Body of `POST /workers/register`, before the coordinator applies defaults. */
export type WorkerRegistration = v.InferInput<typeof RegisterWorkerBodySchema>;

export interface AgentOptions {
  /** Coordinator base URLs. The agent moves to the next one when the current one fails. */
  coordinatorUrls: string[];
  /** Bearer token for `POST /workers/register`. */
  workerToken: string;
  registration: WorkerRegistration;
  table: RouteTable;
  /** Collects the `stats` of each heartbeat. Without it heartbeats carry empty stats. */
  collectStats?: () => HeartbeatStats;
  /** Upper bound of the first reconnect delay in milliseconds, doubled per failure. */
  minBackoffMs?: number;
  /** Largest reconnect delay, in milliseconds. */
  maxBackoffMs?: number;
  /** Time allowed for registration and for the WebSocket upgrade, in milliseconds. */
  requestTimeoutMs?: number;
}

export interface RegisteredInfo {
  coordinatorUrl: string;
  workerId: string;
  instanceId: string;
  generation: number;
  epoch: string;
  revision: number;
  heartbeatIntervalMs: number;
  /** Whether the coordinator created the worker (201) instead of registering it again (200). */
  isNew: boolean;
}

/** Step the agent takes after a session closes. */
export type NextStep = 'resume' | 'register' | 'stop';

export interface DisconnectedInfo {
  coordinatorUrl: string;
  code: number;
  reason: string;
  wasOpen: boolean;
  upgradeStatus?: number;
  nextStep: NextStep;
  /** Delay before the next attempt in milliseconds, or 0 when the agent stops. */
  retryInMs: number;
}

/** Reason the agent stopped for good, after which the process should exit with a failure. */
export interface StoppedInfo {
  reason: 'superseded' | 'registration_rejected';
  detail: string;
}

export interface AgentEvents {
  registered: [info: RegisteredInfo];
  connected: [info: { coordinatorUrl: string; resumed: boolean }];
  disconnected: [info: DisconnectedInfo];
  applied: [info: AppliedInfo];
  mismatch: [info: MismatchInfo];
  stopped: [info: StoppedInfo];
  error: [error: Error];
}

/** Session token and heartbeat settings that a registration grants. */
interface SessionGrant {
  sessionToken: string;
  heartbeatIntervalMs: number;
  heartbeatMisses: number;
}

interface ReconnectPlan {
  nextStep: NextStep;
  /** Whether to try the next coordinator URL. */
  isRotating: boolean;
  /** Whether to wait the largest backoff instead of the next one. */
  isLongWait: boolean;
}

const STOP_PLAN: ReconnectPlan = { nextStep: 'stop', isRotating: false, isLongWait: false };

const RegistrationResponseSchema = v.looseObject({
  worker: v.looseObject({ id: v.string() }),
  instance_id: v.string(),
  session_token: v.pipe(v.string(), v.minLength(1)),
  generation: v.number(),
  heartbeat_interval_ms: v.pipe(v.number(), v.integer(), v.minValue(1)),
  heartbeat_misses: v.pipe(v.number(), v.integer(), v.minValue(1)),
  epoch: v.string(),
  revision: v.number(),
});

/**
 * Delay generator for reconnects: exponential with full jitter, so many workers that lost
 * one coordinator do not all return at the same moment.
 */
export class Backoff {
  readonly #minMs: number;
  readonly #maxMs: number;
  readonly #random: () => number;
  #failures = 0;

  constructor(minMs: number, maxMs: number, random: () => number = Math.random) {
    this.#minMs = minMs;
    this.#maxMs = maxMs;
    this.#random = random;
  }

  /** Returns the next delay in milliseconds and counts one more failure. */
  next(): number {
    const capMs = Math.min(this.#maxMs, this.#minMs * 2 ** Math.min(this.#failures, 30));
    this.#failures += 1;
    return Math.floor(this.#random() * capMs);
  }

  /** Returns a delay from half the largest delay up to the largest, counting no failure. */
  longest(): number {
    return Math.floor(this.#maxMs / 2 + (this.#random() * this.#maxMs) / 2);
  }

  reset(): void {
    this.#failures = 0;
  }
}

/**
 * Worker session client: registers with a coordinator, keeps a WebSocket session open to
 * keep the route table in sync, and reconnects with backoff until closed. The table keeps
 * serving its last state while disconnected.
 */
export class WorkerAgent extends EventEmitter<AgentEvents> {
  readonly #options: AgentOptions;
  readonly #backoff: Backoff;
  readonly #abort = new AbortController();
  #urlIndex = 0;
  #grant: SessionGrant | null = null;
  #session: WorkerSession | null = null;
  #wake: (() => void) | null = null;
  #loop: Promise<void> | null = null;
  #isClosing = false;

  constructor(options: AgentOptions) {
    super();
    if (options.coordinatorUrls.length === 0) {
      throw new TypeError('Expected at least one coordinator URL, got none');
    }
    this.#options = options;
    this.#backoff = new Backoff(options.minBackoffMs ?? 100, options.maxBackoffMs ?? 10_000);
  }

  /** The coordinator URL the agent uses now. */
  get coordinatorUrl(): string {
    return this.#options.coordinatorUrls[this.#urlIndex];
  }

  /** Starts registering and connecting in the background, reporting progress as events. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** Closes the session and stops reconnecting. */
  async close(): Promise<void> {
    this.#isClosing = true;
    this.#abort.abort();
    this.#wake?.();
    this.#session?.close(1000, 'worker shutting down');
    await this.#loop;
  }

  /** Reports a route the worker could not serve (`nack` with `rejected`). */
  reject(revision: number, error: string): boolean {
    return this.#session?.nack(revision, 'rejected', error) ?? false;
  }

  async #run(): Promise<void> {
    while (!this.#isClosing) {
      const delayMs = await this.#step();
      if (delayMs === 'stop') return;
      await this.#sleep(delayMs);
    }
  }

  async #step(): Promise<number | 'stop'> {
    if (this.#grant === null) {
      try {
        this.#grant = await this.#register();
      } catch (error) {
        return this.#afterRegistrationFailure(error);
      }
    }
    if (this.#isClosing) return 'stop';

    const end = await this.#runSession(this.#grant);
    return this.#afterSession(end);
  }

  async #register(): Promise<SessionGrant> {
    const coordinatorUrl = this.coordinatorUrl;
    const { workerToken, registration, requestTimeoutMs = 10_000 } = this.#options;
    const signal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(requestTimeoutMs)]);
    const { body, isNew } = await requestRegistration(coordinatorUrl, {
      workerToken,
      registration,
      signal,
    });

    this.#dropTableOfOtherEpoch(body.epoch);
    this.emit('registered', {
      coordinatorUrl,
      workerId: body.worker.id,
      instanceId: body.instance_id,
      generation: body.generation,
      epoch: body.epoch,
      revision: body.revision,
      heartbeatIntervalMs: body.heartbeat_interval_ms,
      isNew,
    });
    return {
      sessionToken: body.session_token,
      heartbeatIntervalMs: body.heartbeat_interval_ms,
      heartbeatMisses: body.heartbeat_misses,
    };
  }

  /** Drops a table from another database early, since none of its routes are valid. */
  #dropTableOfOtherEpoch(epoch: string): void {
    const { table } = this.#options;
    if (table.epoch !== null && table.epoch !== epoch) table.drop('epoch_changed');
  }

  #afterRegistrationFailure(error: unknown): number | 'stop' {
    if (this.#isClosing) return 'stop';

    const failure =
      error instanceof RegistrationError
        ? error
        : new RegistrationError(this.coordinatorUrl, undefined, String(error), { cause: error });
    this.emit('error', failure);
    if (failure.isPermanent) {
      this.emit('stopped', { reason: 'registration_rejected', detail: failure.message });
      return 'stop';
    }
    this.#rotateUrl();
    return this.#backoff.next();
  }

  async #runSession(grant: SessionGrant): Promise<SessionEnd> {
    const coordinatorUrl = this.coordinatorUrl;
    const session = new WorkerSession({
      coordinatorUrl,
      sessionToken: grant.sessionToken,
      table: this.#options.table,
      heartbeatIntervalMs: grant.heartbeatIntervalMs,
      heartbeatMisses: grant.heartbeatMisses,
      collectStats: this.#options.collectStats ?? (() => ({})),
      handshakeTimeoutMs: this.#options.requestTimeoutMs ?? 10_000,
    });
    this.#forwardEvents(session, coordinatorUrl);
    this.#session = session;
    try {
      return await session.run();
    } catch (error) {
      // Only a URL that the WebSocket client cannot use gets here; treat it as a failed one.
      const detail = String(error);
      this.emit('error', new SessionError(coordinatorUrl, undefined, detail, { cause: error }));
      return { code: 1006, reason: 'invalid coordinator URL', wasOpen: false };
    } finally {
      this.#session = null;
    }
  }

  #forwardEvents(session: WorkerSession, coordinatorUrl: string): void {
    session.on('open', ({ resumed }) => this.emit('connected', { coordinatorUrl, resumed }));
    session.on('applied', (info) => {
      // A session that delivers a table is healthy, so the next failure starts from scratch.
      this.#backoff.reset();
      this.emit('applied', info);
    });
    session.on('mismatch', (info) => this.emit('mismatch', info));
    session.on('error', (error) => this.emit('error', error));
  }

  #afterSession(end: SessionEnd): number | 'stop' {
    const coordinatorUrl = this.coordinatorUrl;
    this.#reportRejectedUpgrade(coordinatorUrl, end);
    const plan = this.#isClosing ? STOP_PLAN : planReconnect(end);
    if (plan.nextStep === 'stop') {
      this.emit('disconnected', { coordinatorUrl, ...end, nextStep: 'stop', retryInMs: 0 });
      if (this.#isClosing) return 'stop';

      const detail = `Another process registered instance ${this.#instanceLabel()} again`;
      this.emit('stopped', { reason: 'superseded', detail });
      return 'stop';
    }

    if (plan.nextStep === 'register') this.#grant = null;
    if (plan.isRotating) this.#rotateUrl();
    const retryInMs = plan.isLongWait ? this.#backoff.longest() : this.#backoff.next();
    this.emit('disconnected', { coordinatorUrl, ...end, nextStep: plan.nextStep, retryInMs });
    return retryInMs;
  }

  #reportRejectedUpgrade(coordinatorUrl: string, end: SessionEnd): void {
    if (end.upgradeStatus === undefined) return;

    const detail = end.reason || 'the coordinator did not accept the session';
    this.emit('error', new SessionError(coordinatorUrl, end.upgradeStatus, detail));
  }

  #instanceLabel(): string {
    const { authority, instance_id: instanceId } = this.#options.registration;
    return instanceId === undefined ? `of ${authority}` : `${instanceId} of ${authority}`;
  }

  #rotateUrl(): void {
    this.#urlIndex = (this.#urlIndex + 1) % this.#options.coordinatorUrls.length;
  }

  #sleep(delayMs: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
      const timer = setTimeout(wake, delayMs);
      this.#wake = wake;
    });
  }
}

/**
 * Decides how to go on after a session closed.
 *
 * - 4409: another process registered this instance again, so this one must stop serving.
 * - 4401, or an upgrade rejected with 401 or 403: the session token is invalid, so register.
 * - 4404: an operator deregistered the worker. Register again after the longest backoff, so
 *   that a process stopped right after the deregistration does not undo it at once.
 * - 4000, 4400, 4408, 4429: the coordinator works but ended this session, so resume there.
 * - 1001, 1012, and connections that failed or dropped: resume on the next coordinator.
 */
export function planReconnect(end: SessionEnd): ReconnectPlan {
  if (end.upgradeStatus === 401 || end.upgradeStatus === 403) {
    return { nextStep: 'register', isRotating: false, isLongWait: false };
  }
  switch (end.code) {
    case CloseCode.superseded:
      return { nextStep: 'stop', isRotating: false, isLongWait: false };
    case CloseCode.unauthorized:
      return { nextStep: 'register', isRotating: false, isLongWait: false };
    case CloseCode.deregistered:
      return { nextStep: 'register', isRotating: false, isLongWait: true };
    case CloseCode.lost:
    case CloseCode.malformed:
    case CloseCode.helloTimeout:
    case CloseCode.tooSlow:
      return { nextStep: 'resume', isRotating: false, isLongWait: false };
    default:
      return { nextStep: 'resume', isRotating: true, isLongWait: false };
  }
}

interface RegistrationRequest {
  workerToken: string;
  registration: WorkerRegistration;
  signal: AbortSignal;
}

type RegistrationResponse = v.InferOutput<typeof RegistrationResponseSchema>;

/** Sends `POST /workers/register` and validates the response. Throws RegistrationError. */
export async function requestRegistration(
  coordinatorUrl: string,
  request: RegistrationRequest,
): Promise<{ body: RegistrationResponse; isNew: boolean }> {
  const response = await postRegistration(coordinatorUrl, request);
  const body = await readJson(response);
  if (!response.ok) {
    throw new RegistrationError(coordinatorUrl, response.status, problemDetail(body, response));
  }

  const result = v.safeParse(RegistrationResponseSchema, body);
  if (!result.success) {
    const issues = toValidationIssues(result.issues).map((issue) => issue.path || '(root)');
    const detail = `the response is missing or has invalid fields: ${issues.join(', ')}`;
    throw new RegistrationError(coordinatorUrl, response.status, detail);
  }
  return { body: result.output, isNew: response.status === 201 };
}

async function postRegistration(
  coordinatorUrl: string,
  request: RegistrationRequest,
): Promise<Response> {
  const endpoint = new URL('workers/register', withTrailingSlash(coordinatorUrl));
  try {
    return await fetch(endpoint, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${request.workerToken}`,
        'content-type': 'application/json',
        accept: 'application/json',
      },
      body: JSON.stringify(request.registration),
      signal: request.signal,
    });
  } catch (error) {
    const detail = describeFetchError(error);
    throw new RegistrationError(coordinatorUrl, undefined, detail, { cause: error });
  }
}

async function readJson(response: Response): Promise<unknown> {
  try {
    return await response.json();
  } catch {
    return undefined;
  }
}

/** Returns the `detail` of a problem+json body, or the status text when it has none. */
function problemDetail(body: unknown, response: Response): string {
  if (typeof body === 'object' && body !== null && 'detail' in body) {
    const { detail } = body;
    if (typeof detail === 'string' && detail !== '') return detail;
  }
  return response.statusText || 'no details given';
}

/** Names the network error behind `fetch failed`, such as ECONNREFUSED. */
function describeFetchError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  if (error.name === 'TimeoutError') return 'timed out';
  const cause = error.cause;
  if (!(cause instanceof Error)) return error.message;
  const code = (cause as NodeJS.ErrnoException).code;
  return `${error.message} (${code ?? cause.message})`;
}
