import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import { CloseCode, MAX_MESSAGE_BYTES, type RouteEvent } from '../../proto/index.ts';
import { errorCode, parseProblem } from './client.ts';
import { CliError, ProblemError } from './errors.ts';

export interface EventStreamOptions {
  /** `ws://…/events/stream` with its filters; the stream sets `since` itself. */
  url: URL;
  headers: Record<string, string>;
  /** Revision to start after; undefined starts with live events only. */
  since?: number;
  onEvent: (event: RouteEvent) => void;
  /** Receives notices about lost connections and reconnects, meant for stderr. */
  onNotice: (message: string) => void;
  /** Called on every successful connection, the first one included. */
  onOpen?: (isReconnect: boolean) => void;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Interval of WebSocket pings; a ping unanswered for one interval drops the connection. */
  pingIntervalMs?: number;
  handshakeTimeoutMs?: number;
}

/** Outcome of one connection attempt, collected until its `close` event. */
interface Attempt {
  socket: WebSocket;
  openedAtMs?: number;
  error?: Error;
  rejection?: ProblemError;
}

const DEFAULTS = {
  initialBackoffMs: 250,
  maxBackoffMs: 10_000,
  pingIntervalMs: 15_000,
  handshakeTimeoutMs: 10_000,
};

// A connection that stayed open this long resets the backoff, even before its first event.
const STABLE_CONNECTION_MS = 5_000;

// Close codes after which reconnecting cannot help.
const FATAL_CLOSE_CODES = new Set<number>([
  1008,
  CloseCode.malformed,
  CloseCode.unauthorized,
  CloseCode.eventsCompacted,
]);

/**
 * Reader of `GET /events/stream` that survives lost connections.
 *
 * It remembers the revision of the last event it delivered and reconnects with
 * `since=<that revision>`, with a doubling backoff, so the caller sees every event once and in
 * revision order. Frames at or below that revision are dropped, which guards against repeats.
 */
export class EventStream {
  readonly #options: EventStreamOptions & typeof DEFAULTS;
  #lastRevision: number | undefined;
  #attempt: Attempt | undefined;
  #failures = 0;
  #hasConnected = false;
  #isStopped = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #pingTimer: NodeJS.Timeout | undefined;
  #settle: { resolve: () => void; reject: (error: Error) => void } | undefined;

  constructor(options: EventStreamOptions) {
    this.#options = {
      ...options,
      initialBackoffMs: options.initialBackoffMs ?? DEFAULTS.initialBackoffMs,
      maxBackoffMs: options.maxBackoffMs ?? DEFAULTS.maxBackoffMs,
      pingIntervalMs: options.pingIntervalMs ?? DEFAULTS.pingIntervalMs,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? DEFAULTS.handshakeTimeoutMs,
    };
    this.#lastRevision = options.since;
  }

  /** Revision of the last event delivered, or the starting `since`. */
  get lastRevision(): number | undefined {
    return this.#lastRevision;
  }

  /** Connects and delivers events until `stop()`; rejects when reconnecting cannot help. */
  run(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#settle = { resolve, reject };
      this.#connect();
    });
  }

  /** Closes the connection and resolves `run()`. */
  stop(): void {
    if (this.#isStopped) return;
    this.#isStopped = true;
    clearTimeout(this.#retryTimer);
    clearInterval(this.#pingTimer);
    const socket = this.#attempt?.socket;
    if (!socket || socket.readyState === WebSocket.CLOSED) {
      this.#settle?.resolve();
      return;
    }
    socket.close(1000);
    // Do not wait for a peer that never completes the closing handshake.
    setTimeout(() => socket.terminate(), 1_000).unref();
  }

  #connect(): void {
    const url = new URL(this.#options.url);
    if (this.#lastRevision !== undefined) url.searchParams.set('since', String(this.#lastRevision));
    const socket = new WebSocket(url, {
      headers: this.#options.headers,
      handshakeTimeout: this.#options.handshakeTimeoutMs,
      maxPayload: MAX_MESSAGE_BYTES,
    });
    const attempt: Attempt = { socket };
    this.#attempt = attempt;
    socket.on('open', () => this.#onOpen(attempt));
    socket.on('message', (data) => this.#onMessage(data));
    socket.on('pong', () => {
      (socket as AliveSocket).isAlive = true;
    });
    socket.on('unexpected-response', (_request, response) => {
      void this.#onRejected(attempt, response);
    });
    socket.on('error', (error) => (attempt.error = error));
    socket.on('close', (code, reason) => this.#onClose(attempt, code, reason.toString()));
  }

  #onOpen(attempt: Attempt): void {
    attempt.openedAtMs = Date.now();
    const isReconnect = this.#hasConnected;
    this.#hasConnected = true;
    // Tells the operator, on stderr, from which revision the output starts.
    const verb = isReconnect ? 'Reconnected' : 'Connected';
    const target = stripQuery(attempt.socket.url);
    this.#options.onNotice(`${verb} to ${target}; following ${this.#resumePoint()}`);
    this.#startPings(attempt.socket);
    this.#options.onOpen?.(isReconnect);
  }

  #onMessage(data: WebSocket.RawData): void {
    if (this.#isStopped) return;
    this.#failures = 0;
    const event = parseEvent(data.toString());
    if (!event) {
      this.#options.onNotice(`Ignored a frame that is not an event: ${preview(data.toString())}`);
      return;
    }
    if (this.#lastRevision !== undefined && event.revision <= this.#lastRevision) return;
    this.#lastRevision = event.revision;
    this.#options.onEvent(event);
  }

  async #onRejected(attempt: Attempt, response: IncomingMessage): Promise<void> {
    const status = response.statusCode ?? 0;
    const body = await readBody(response);
    attempt.rejection = new ProblemError(
      'GET /events/stream',
      status,
      parseProblem(body, response.statusMessage ?? ''),
    );
    attempt.socket.terminate();
  }

  #onClose(attempt: Attempt, code: number, reason: string): void {
    clearInterval(this.#pingTimer);
    if (this.#isStopped) {
      this.#settle?.resolve();
      return;
    }
    const fatal = this.#fatalError(attempt, code, reason);
    if (fatal) {
      this.#isStopped = true;
      this.#settle?.reject(fatal);
      return;
    }
    this.#scheduleReconnect(describeDrop(attempt, code, reason));
  }

  #fatalError(attempt: Attempt, code: number, reason: string): CliError | undefined {
    const rejection = attempt.rejection;
    // 408 and 429 are passing conditions, but other 4xx responses repeat on every retry.
    if (rejection && rejection.status >= 400 && rejection.status < 500) {
      if (rejection.status !== 408 && rejection.status !== 429) return rejection;
    }
    if (code === CloseCode.eventsCompacted) return this.#compactedError(reason);
    if (FATAL_CLOSE_CODES.has(code)) {
      const suffix = reason ? `: ${reason}` : '';
      return new CliError(`The coordinator closed the event stream with code ${code}${suffix}`);
    }
    return undefined;
  }

  #compactedError(reason: string): CliError {
    const suffix = reason ? ` (${reason})` : '';
    return new CliError(
      `Cannot resume after revision ${this.#lastRevision}: the coordinator no longer keeps ` +
        `events that old${suffix}, so the events after it cannot be shown. Start again ` +
        'without --since to follow live events, or with a later --since.',
    );
  }

  #scheduleReconnect(dropDescription: string): void {
    if (attemptWasStable(this.#attempt)) this.#failures = 0;
    const delayMs = this.#backoffMs();
    this.#failures += 1;
    // The first few drops are reported one by one; a long outage only every tenth retry.
    if (this.#failures <= 3 || this.#failures % 10 === 0) {
      const seconds = (delayMs / 1000).toFixed(1);
      this.#options.onNotice(
        `${dropDescription}; reconnecting in ${seconds}s to follow ${this.#resumePoint()}`,
      );
    }
    this.#retryTimer = setTimeout(() => this.#connect(), delayMs);
  }

  #backoffMs(): number {
    const { initialBackoffMs, maxBackoffMs } = this.#options;
    const ceilingMs = Math.min(maxBackoffMs, initialBackoffMs * 2 ** this.#failures);
    // Jitter spreads the reconnects of many clients after a coordinator restart.
    return Math.round(ceilingMs * (0.5 + Math.random() / 2));
  }

  #resumePoint(): string {
    return this.#lastRevision === undefined
      ? 'live events'
      : `events after revision ${this.#lastRevision}`;
  }

  #startPings(socket: WebSocket): void {
    const alive = socket as AliveSocket;
    alive.isAlive = true;
    this.#pingTimer = setInterval(() => {
      // No pong since the last ping: the connection is dead without having closed.
      if (!alive.isAlive) {
        socket.terminate();
        return;
      }
      alive.isAlive = false;
      socket.ping();
    }, this.#options.pingIntervalMs);
  }
}

type AliveSocket = WebSocket & { isAlive?: boolean };

function attemptWasStable(attempt: Attempt | undefined): boolean {
  const openedAtMs = attempt?.openedAtMs;
  return openedAtMs !== undefined && Date.now() - openedAtMs >= STABLE_CONNECTION_MS;
}

function stripQuery(url: string): string {
  return url.replace(/\?.*$/, '');
}

function describeDrop(attempt: Attempt, code: number, reason: string): string {
  const target = `Event stream at ${stripQuery(attempt.socket.url)}`;
  if (attempt.rejection) return `${target} was rejected: ${attempt.rejection.message}`;
  if (attempt.openedAtMs === undefined) {
    const cause = errorCode(attempt.error) ?? attempt.error?.message ?? 'no answer';
    return `${target} is unreachable (${cause})`;
  }
  const suffix = reason ? `, ${reason}` : '';
  return `${target} closed (code ${code}${suffix})`;
}

/** Parses a frame; returns undefined unless it has a numeric revision and a string type. */
export function parseEvent(text: string): RouteEvent | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (value === null || typeof value !== 'object') return undefined;
  const candidate = value as Partial<RouteEvent>;
  if (!Number.isInteger(candidate.revision) || typeof candidate.type !== 'string') return undefined;
  return value as RouteEvent;
}

function preview(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text);
}

// Bounded, because a rejected upgrade should carry a short problem+json body.
const MAX_REJECTION_BODY_BYTES = 64 * 1024;

function readBody(response: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    response.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_REJECTION_BODY_BYTES) chunks.push(chunk);
    });
    response.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    response.on('error', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}
