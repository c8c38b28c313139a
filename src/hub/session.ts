import * as v from 'valibot';
import type { WebSocket } from 'ws';
import {
  CloseCode,
  PROTOCOL_VERSION,
  TableDigest,
  WorkerMessageSchema,
  type Ack,
  type CoordinatorMessage,
  type Hello,
  type NackMessage,
  type Route,
  type WorkerMessage,
} from '../../proto/index.ts';
import type { Logger } from '../log.ts';
import type { ChangeRecord } from '../store/writer.ts';
import type { InstanceKey } from '../store/workers.ts';
import { foldChanges, type ResumePlan, type TableSnapshot } from './sync.ts';

/** Hub operations a session calls. */
export interface SessionHost {
  readonly epoch: string;
  /** The last revision the change feed delivered. */
  readonly feedRevision: number;
  readSnapshot(workerId: string): Promise<TableSnapshot>;
  planResume(workerId: string, fromRevision: number, digest: string): Promise<ResumePlan>;
  /** Records the session as open; resolves false when the registration was superseded. */
  open(session: WorkerSession, appliedRevision: number): Promise<boolean>;
  closed(session: WorkerSession): void;
  ack(session: WorkerSession, revision: number): void;
  nack(session: WorkerSession, message: NackMessage): void;
  heartbeat(session: WorkerSession, at: Date): void;
}

export interface SessionLimits {
  helloTimeoutMs: number;
  /** Unsent bytes above which nothing new is written to the socket. */
  highWaterBytes: number;
  /** How long the socket may stay above the high-water mark before the session closes. */
  sendTimeoutMs: number;
  /** Messages a worker may send per second. */
  maxMessagesPerSecond: number;
  /** Bytes of routes per snapshot message, below the frame limit. */
  snapshotChunkBytes: number;
}

type State = 'awaiting_hello' | 'syncing' | 'live' | 'closed';

const MAX_MALFORMED = 3;
const FIRST_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 60_000;

/**
 * One worker instance's WebSocket session: replies to hello with a snapshot or
 * a diff, then pushes each change of the worker's table as a diff.
 *
 * Invariant: the worker's table is at `#sentRevision` with `#digest` once it
 * applies what was sent; each diff starts from the previous message's revision.
 */
export class WorkerSession {
  readonly key: InstanceKey;
  readonly authority: string;
  readonly #socket: WebSocket;
  readonly #host: SessionHost;
  readonly #limits: SessionLimits;
  readonly #log: Logger;
  #state: State = 'awaiting_hello';
  #sentRevision = 0;
  #digest = new TableDigest();
  /** Digests sent per revision not yet acknowledged, to check acks against. */
  #sentDigests = new Map<number, string>();
  /** Ids of the routes each unacknowledged message carried, by revision. */
  #sentRouteIds = new Map<number, string[]>();
  #ackedRevision = 0;
  #ackedDigest = new TableDigest();
  #pending: ChangeRecord[] = [];
  #malformedCount = 0;
  #messageWindow = { startedAt: 0, count: 0 };
  #blockedSince: number | null = null;
  #isFlushScheduled = false;
  #backoff: { delayMs: number; timer: NodeJS.Timeout | null; routeIds: Set<string> } | null = null;
  #helloTimer: NodeJS.Timeout;
  /** Revision of the worker.connected change this session wrote. */
  connectedRevision = 0;

  constructor(options: {
    socket: WebSocket;
    key: InstanceKey;
    authority: string;
    host: SessionHost;
    limits: SessionLimits;
    log: Logger;
  }) {
    this.#socket = options.socket;
    this.key = options.key;
    this.authority = options.authority;
    this.#host = options.host;
    this.#limits = options.limits;
    this.#log = options.log;
    this.#helloTimer = setTimeout(() => this.#helloTimedOut(), this.#limits.helloTimeoutMs);
    this.#socket.on('message', (data, isBinary) => this.#receive(data, isBinary));
    this.#socket.on('close', () => this.#closed());
    this.#socket.on('error', (error) => this.#log.warn({ err: error }, 'worker socket error'));
  }

  get isOpen(): boolean {
    return !this.#isClosed();
  }

  // A method, not a comparison, because the state changes across awaits.
  #isClosed(): boolean {
    return this.#state === 'closed';
  }

  get isLive(): boolean {
    return this.#state === 'live';
  }

  /** Closes the session, telling the worker why first. */
  close(code: number, reason: string): void {
    if (this.#isClosed()) return;
    this.#send({ type: 'error', code: String(code), message: reason });
    this.#socket.close(code, reason.slice(0, 120));
    this.#closed();
  }

  /** Takes route changes of this worker's table, in revision order. */
  enqueue(change: ChangeRecord): void {
    if (this.#isClosed()) return;
    this.#pending.push(change);
    if (this.#backoff && change.route_id && this.#backoff.routeIds.has(change.route_id)) {
      // A new version of a rejected route may fix it: send now, not after the backoff.
      void this.#resendRejected();
      return;
    }
    this.#scheduleFlush();
  }

  /** Closes the session when its socket has stayed backed up too long. */
  checkBackpressure(now: number): void {
    if (this.#isClosed()) return;
    if (this.#socket.bufferedAmount <= this.#limits.highWaterBytes) {
      this.#blockedSince = null;
      return;
    }
    this.#blockedSince ??= now;
    if (now - this.#blockedSince > this.#limits.sendTimeoutMs) {
      this.#log.warn(
        { worker_id: this.key.workerId, buffered_bytes: this.#socket.bufferedAmount },
        'worker reads too slowly; closing its session so it resumes',
      );
      this.close(CloseCode.tooSlow, 'too slow to read its messages');
    }
  }

  #scheduleFlush(): void {
    if (this.#isFlushScheduled) return;
    this.#isFlushScheduled = true;
    // Changes committed together reach the feed in one turn: one diff carries them all.
    setImmediate(() => {
      this.#isFlushScheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    if (this.#state !== 'live' || this.#backoff || this.#pending.length === 0) return;
    if (this.#socket.bufferedAmount > this.#limits.highWaterBytes) {
      this.checkBackpressure(Date.now());
      return;
    }
    const changes = this.#pending.filter((change) => change.revision > this.#sentRevision);
    this.#pending = [];
    const delta = foldChanges(this.key.workerId, changes, this.#digest);
    if (delta.upserts.length === 0 && delta.removes.length === 0) return;
    this.#sendDiff(this.#sentRevision, this.#host.feedRevision, delta.upserts, delta.removes, delta.digest);
  }

  #sendDiff(from: number, revision: number, upserts: Route[], removes: string[], digest: TableDigest) {
    this.#send({
      type: 'diff',
      epoch: this.#host.epoch,
      from_revision: from,
      revision,
      upserts,
      removes,
      digest: digest.toHex(),
    });
    this.#advance(revision, digest, [...upserts.map((route) => route.id), ...removes]);
  }

  #advance(revision: number, digest: TableDigest, routeIds: string[] = []): void {
    this.#sentRouteIds.set(revision, routeIds);
    this.#sentRevision = revision;
    this.#digest = digest;
    this.#sentDigests.set(revision, digest.toHex());
  }

  async #sendSnapshot(reason: string): Promise<void> {
    this.#state = 'syncing';
    const snapshot = await this.#host.readSnapshot(this.key.workerId);
    if (this.#isClosed()) return;
    this.#log.info(
      { worker_id: this.key.workerId, revision: snapshot.revision, routes: snapshot.routes.length, reason },
      'sending snapshot',
    );
    await this.#streamSnapshot(snapshot);
    this.#pending = this.#pending.filter((change) => change.revision > snapshot.revision);
    this.#advance(snapshot.revision, new TableDigest(snapshot.digest));
    this.#goLive();
  }

  async #streamSnapshot(snapshot: TableSnapshot): Promise<void> {
    const chunks = chunkRoutes(snapshot.routes, this.#limits.snapshotChunkBytes);
    for (let i = 0; i < chunks.length; i++) {
      if (this.#isClosed()) return;
      await this.#waitForRoom();
      const message: CoordinatorMessage = {
        type: 'snapshot',
        epoch: this.#host.epoch,
        revision: snapshot.revision,
        routes: chunks[i],
        digest: snapshot.digest,
      };
      if (i < chunks.length - 1) message.more = true;
      this.#send(message);
    }
  }

  async #waitForRoom(): Promise<void> {
    while (this.#socket.bufferedAmount > this.#limits.highWaterBytes && !this.#isClosed()) {
      this.checkBackpressure(Date.now());
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  #goLive(): void {
    if (this.#isClosed()) return;
    this.#state = 'live';
    this.#scheduleFlush();
  }

  #receive(data: unknown, isBinary: boolean): void {
    if (this.#isClosed()) return;
    if (this.#isFlooding()) return;
    const message = parseMessage(data, isBinary);
    if (typeof message === 'string') return this.#malformed(message);
    void this.#handle(message).catch((error) => {
      this.#log.error({ err: error, worker_id: this.key.workerId }, 'handling a worker message failed');
    });
  }

  #isFlooding(): boolean {
    const now = Date.now();
    const window = this.#messageWindow;
    if (now - window.startedAt >= 1000) {
      window.startedAt = now;
      window.count = 0;
    }
    window.count += 1;
    if (window.count <= this.#limits.maxMessagesPerSecond) return false;
    this.close(CloseCode.tooSlow, 'too many messages');
    return true;
  }

  async #handle(message: WorkerMessage): Promise<void> {
    if (message.type === 'hello') return this.#hello(message);
    if (this.#state === 'awaiting_hello') return this.#malformed(`expected hello, got ${message.type}`);
    if (message.type === 'ack') return this.#ack(message);
    if (message.type === 'nack') return this.#nack(message);
    this.#host.heartbeat(this, new Date());
  }

  async #hello(hello: Hello): Promise<void> {
    if (this.#state !== 'awaiting_hello') return this.#malformed('hello was already received');
    clearTimeout(this.#helloTimer);
    this.#state = 'syncing';
    const plan = await this.#planHello(hello);
    const applied = plan.kind === 'diff' ? plan.fromRevision : 0;
    if (!(await this.#host.open(this, applied))) {
      return this.close(CloseCode.superseded, 'superseded by a newer registration');
    }
    if (plan.kind === 'snapshot') return this.#sendSnapshot(plan.reason);
    // Changes that landed between the plan and now are still pending and follow as a diff.
    this.#ackedRevision = plan.fromRevision;
    this.#pending = this.#pending.filter((change) => change.revision > plan.revision);
    this.#sendDiff(plan.fromRevision, plan.revision, plan.delta.upserts, plan.delta.removes, plan.delta.digest);
    this.#goLive();
  }

  async #planHello(hello: Hello): Promise<ResumePlan> {
    if (hello.epoch !== this.#host.epoch) return { kind: 'snapshot', reason: 'new or other epoch' };
    if (hello.applied_revision === undefined || hello.digest === undefined) {
      return { kind: 'snapshot', reason: 'no resume fields' };
    }
    const plan = await this.#host.planResume(this.key.workerId, hello.applied_revision, hello.digest);
    if (plan.kind === 'diff') this.#ackedDigest = new TableDigest(hello.digest);
    return plan;
  }

  #ack(ack: Ack): void {
    const expected = this.#sentDigests.get(ack.revision);
    if (ack.revision > this.#sentRevision || expected === undefined) {
      if (ack.revision <= this.#ackedRevision) return;
      return this.#malformed(`ack for revision ${ack.revision}, which was never sent`);
    }
    if (expected !== ack.digest) {
      void this.#sendSnapshot('acknowledged digest differs from the one sent');
      return;
    }
    for (const revision of this.#sentDigests.keys()) {
      if (revision < ack.revision) this.#sentDigests.delete(revision);
    }
    for (const revision of this.#sentRouteIds.keys()) {
      if (revision <= ack.revision) this.#sentRouteIds.delete(revision);
    }
    this.#ackedRevision = ack.revision;
    this.#ackedDigest = new TableDigest(ack.digest);
    if (this.#backoff && ack.revision >= this.#sentRevision) this.#endBackoff();
    this.#host.ack(this, ack.revision);
  }

  #nack(nack: NackMessage): void {
    this.#host.nack(this, nack);
    if (nack.reason === 'digest_mismatch') {
      this.#endBackoff();
      void this.#sendSnapshot('worker reported a digest mismatch');
      return;
    }
    this.#startBackoff(nack.revision);
  }

  /**
   * Rewinds to the last acknowledged table and waits before sending again, so
   * a worker that rejects a route is not fed the same change in a tight loop.
   */
  #startBackoff(revision: number): void {
    const routeIds = new Set([...this.#sentRouteIds.values()].flat());
    const delayMs = Math.min((this.#backoff?.delayMs ?? FIRST_BACKOFF_MS / 2) * 2, MAX_BACKOFF_MS);
    if (this.#backoff?.timer) clearTimeout(this.#backoff.timer);
    this.#backoff = { delayMs, routeIds, timer: setTimeout(() => void this.#resendRejected(), delayMs) };
    this.#log.debug({ worker_id: this.key.workerId, revision, delay_ms: delayMs }, 'backing off');
  }

  async #resendRejected(): Promise<void> {
    if (!this.#backoff || this.#isClosed()) return;
    if (this.#backoff.timer) clearTimeout(this.#backoff.timer);
    this.#backoff.timer = null;
    const plan = await this.#host.planResume(this.key.workerId, this.#ackedRevision, this.#ackedDigest.toHex());
    if (this.#isClosed()) return;
    if (plan.kind === 'snapshot') return this.#sendSnapshot(plan.reason);
    this.#pending = this.#pending.filter((change) => change.revision > plan.revision);
    // The backoff stays in place, holding other diffs, until the worker acks or nacks this one.
    this.#sendDiff(plan.fromRevision, plan.revision, plan.delta.upserts, plan.delta.removes, plan.delta.digest);
  }

  #endBackoff(): void {
    if (this.#backoff?.timer) clearTimeout(this.#backoff.timer);
    this.#backoff = null;
    this.#scheduleFlush();
  }

  #malformed(problem: string): void {
    this.#malformedCount += 1;
    this.#send({ type: 'error', code: 'invalid_message', message: problem });
    if (this.#malformedCount >= MAX_MALFORMED) {
      this.close(CloseCode.malformed, `${MAX_MALFORMED} malformed messages`);
    }
  }

  #helloTimedOut(): void {
    if (this.#state === 'awaiting_hello') this.close(CloseCode.helloTimeout, 'no hello in time');
  }

  #send(message: CoordinatorMessage): void {
    if (this.#socket.readyState !== this.#socket.OPEN) return;
    this.#socket.send(JSON.stringify(message));
  }

  #closed(): void {
    if (this.#isClosed()) return;
    this.#state = 'closed';
    clearTimeout(this.#helloTimer);
    if (this.#backoff?.timer) clearTimeout(this.#backoff.timer);
    this.#pending = [];
    this.#host.closed(this);
  }
}

function parseMessage(data: unknown, isBinary: boolean): WorkerMessage | string {
  if (isBinary) return 'messages must be JSON text frames';
  let json: unknown;
  try {
    json = JSON.parse(String(data));
  } catch {
    return 'message is not valid JSON';
  }
  const result = v.safeParse(WorkerMessageSchema, json);
  if (result.success) return result.output;
  const issue = result.issues[0];
  const path = (issue.path ?? []).map((item) => String(item.key)).join('.');
  return `invalid message${path ? ` at ${path}` : ''}: ${issue.message}`;
}

/** Splits routes into chunks whose JSON stays under `maxBytes` each; always at least one. */
export function chunkRoutes(routes: Route[], maxBytes: number): Route[][] {
  const chunks: Route[][] = [[]];
  let size = 0;
  for (const route of routes) {
    const bytes = Buffer.byteLength(JSON.stringify(route));
    if (size + bytes > maxBytes && chunks[chunks.length - 1].length > 0) {
      chunks.push([]);
      size = 0;
    }
    chunks[chunks.length - 1].push(route);
    size += bytes;
  }
  return chunks;
}

export { PROTOCOL_VERSION };
