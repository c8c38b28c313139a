import { EventEmitter } from 'node:events';
import type { IncomingMessage } from 'node:http';
import * as v from 'valibot';
import WebSocket from 'ws';
import {
  CoordinatorMessageSchema,
  MAX_MESSAGE_BYTES,
  PROTOCOL_VERSION,
  toValidationIssues,
  type Hello,
  type WorkerMessage,
} from '../../proto/index.ts';
import { CoordinatorReportedError, InvalidMessageError, SessionError } from './errors.ts';
import type { ApplyResult, RouteTable } from './table.ts';

/** Heartbeat `stats`: routes active since the previous heartbeat and open client connections. */
export interface HeartbeatStats {
  routes?: Array<{ id: string; last_activity_at: string }>;
  connections?: number;
}

export interface SessionOptions {
  /** Base URL of the coordinator, such as `http://127.0.0.1:6030`. */
  coordinatorUrl: string;
  /** Session token from registration, sent as a bearer token on the upgrade. */
  sessionToken: string;
  table: RouteTable;
  heartbeatIntervalMs: number;
  /** Heartbeat intervals without a pong or message after which the socket counts as dead. */
  heartbeatMisses: number;
  collectStats: () => HeartbeatStats;
  /** Time allowed for the WebSocket upgrade, in milliseconds. */
  handshakeTimeoutMs: number;
}

/** Outcome of a finished session. */
export interface SessionEnd {
  /** WebSocket close code, or 1006 when the connection failed without a close frame. */
  code: number;
  reason: string;
  /** Whether the upgrade succeeded, so the session was open at some point. */
  wasOpen: boolean;
  /** HTTP status of the coordinator's response when it rejected the upgrade. */
  upgradeStatus?: number;
}

export interface AppliedInfo {
  kind: 'snapshot' | 'diff';
  revision: number;
  digest: string;
  routeCount: number;
}

export interface MismatchInfo {
  kind: 'snapshot' | 'diff';
  revision: number;
  error: string;
  /** Whether the table was emptied. When false it still serves its last revision. */
  dropped: boolean;
}

export interface SessionEvents {
  open: [info: { resumed: boolean }];
  applied: [info: AppliedInfo];
  mismatch: [info: MismatchInfo];
  error: [error: Error];
}

type CoordinatorMessage = v.InferOutput<typeof CoordinatorMessageSchema>;

/**
 * One WebSocket session with a coordinator: sends `hello`, applies snapshots and diffs to the
 * table, acknowledges them and sends heartbeats until the socket closes.
 */
export class WorkerSession extends EventEmitter<SessionEvents> {
  readonly #options: SessionOptions;
  #socket: WebSocket | null = null;
  #heartbeatTimer: NodeJS.Timeout | null = null;
  #lastSeenAt = 0;
  #upgradeStatus: number | undefined;
  #wasOpen = false;
  #isClosing = false;

  constructor(options: SessionOptions) {
    super();
    this.#options = options;
  }

  /** Opens the session and resolves when it closes, whatever the reason. */
  run(): Promise<SessionEnd> {
    const { coordinatorUrl, sessionToken, handshakeTimeoutMs } = this.#options;
    const socket = new WebSocket(streamUrl(coordinatorUrl), {
      headers: { authorization: `Bearer ${sessionToken}` },
      maxPayload: MAX_MESSAGE_BYTES,
      handshakeTimeout: handshakeTimeoutMs,
    });
    this.#socket = socket;

    socket.on('unexpected-response', (request, response) => this.#onRefused(response));
    socket.on('open', () => this.#onOpen());
    socket.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
    socket.on('pong', () => this.#markSeen());
    socket.on('error', (error) => this.#onSocketError(error));

    return new Promise((resolve) => {
      socket.once('close', (code, reason) => {
        this.#stopHeartbeats();
        resolve(this.#describeEnd(code, reason.toString()));
      });
    });
  }

  /** Closes the session. `run()` resolves once the socket has closed. */
  close(code = 1000, reason = ''): void {
    const socket = this.#socket;
    if (socket === null) return;
    this.#isClosing = true;
    if (socket.readyState === WebSocket.CONNECTING) return socket.terminate();

    socket.close(code, reason);
    // A coordinator that never replies to the close frame must not hold up shutdown.
    setTimeout(() => socket.terminate(), 2_000).unref();
  }

  /** Sends `nack`, as for a route the proxy could not serve. Returns false when not open. */
  nack(revision: number, reason: 'digest_mismatch' | 'rejected', error: string): boolean {
    return this.#send({ type: 'nack', revision, reason, error: error.slice(0, 1000) });
  }

  #onOpen(): void {
    const { table } = this.#options;
    this.#wasOpen = true;
    table.discardPendingSnapshot();
    const hello: Hello = { type: 'hello', protocol_version: PROTOCOL_VERSION };
    if (table.epoch !== null && table.revision !== null) {
      hello.epoch = table.epoch;
      hello.applied_revision = table.revision;
      hello.digest = table.digest;
    }

    this.#send(hello);
    this.#startHeartbeats();
    this.emit('open', { resumed: hello.epoch !== undefined });
  }

  #onRefused(response: IncomingMessage): void {
    this.#upgradeStatus = response.statusCode;
    response.resume();
    this.#socket?.terminate();
  }

  #onSocketError(error: Error): void {
    // A rejected upgrade is reported through its status in SessionEnd instead, and errors
    // of a session being closed on purpose are expected.
    if (this.#upgradeStatus !== undefined || this.#isClosing) return;

    const url = this.#options.coordinatorUrl;
    this.emit('error', new SessionError(url, undefined, error.message, { cause: error }));
  }

  #onMessage(data: WebSocket.RawData, isBinary: boolean): void {
    this.#markSeen();
    const message = this.#parse(data, isBinary);
    if (message === undefined) return;

    switch (message.type) {
      case 'snapshot':
        return this.#report('snapshot', this.#options.table.applySnapshot(message));
      case 'diff':
        return this.#report('diff', this.#options.table.applyDiff(message));
      case 'error':
        this.emit('error', new CoordinatorReportedError(message.code, message.message));
    }
  }

  #parse(data: WebSocket.RawData, isBinary: boolean): CoordinatorMessage | undefined {
    if (isBinary) {
      this.emit('error', new InvalidMessageError('expected a text frame, got a binary one'));
      return undefined;
    }
    let json: unknown;
    try {
      json = JSON.parse(rawDataToString(data));
    } catch (error) {
      this.emit('error', new InvalidMessageError('not valid JSON', [], { cause: error }));
      return undefined;
    }

    const result = v.safeParse(CoordinatorMessageSchema, json);
    if (result.success) return result.output;
    const issues = toValidationIssues(result.issues);
    const summary = issues.map((issue) => `${issue.path || '(root)'}: ${issue.message}`);
    this.emit('error', new InvalidMessageError(summary.join('; '), issues));
    return undefined;
  }

  #report(kind: 'snapshot' | 'diff', result: ApplyResult): void {
    if (result.status === 'partial') return;
    if (result.status === 'applied') {
      this.#send({ type: 'ack', revision: result.revision, digest: result.digest });
      const { revision, digest, routeCount } = result;
      this.emit('applied', { kind, revision, digest, routeCount });
      return;
    }

    this.nack(result.revision, 'digest_mismatch', result.error);
    const { revision, error, dropped } = result;
    this.emit('mismatch', { kind, revision, error, dropped });
  }

  #startHeartbeats(): void {
    const { heartbeatIntervalMs, heartbeatMisses } = this.#options;
    this.#markSeen();
    this.#heartbeatTimer = setInterval(() => {
      // A coordinator that stopped responding to pings is gone even if TCP has not noticed.
      if (Date.now() - this.#lastSeenAt > heartbeatIntervalMs * heartbeatMisses) {
        this.#socket?.terminate();
        return;
      }
      this.#sendHeartbeat();
      this.#socket?.ping();
    }, heartbeatIntervalMs);
  }

  #sendHeartbeat(): void {
    if (this.#socket?.readyState !== WebSocket.OPEN) return;

    const { table, collectStats } = this.#options;
    this.#send({
      type: 'heartbeat',
      sent_at: new Date().toISOString(),
      applied_revision: table.revision ?? 0,
      stats: collectStats(),
    });
  }

  #stopHeartbeats(): void {
    if (this.#heartbeatTimer !== null) clearInterval(this.#heartbeatTimer);
    this.#heartbeatTimer = null;
  }

  #markSeen(): void {
    this.#lastSeenAt = Date.now();
  }

  #send(message: WorkerMessage): boolean {
    const socket = this.#socket;
    if (socket?.readyState !== WebSocket.OPEN) return false;

    socket.send(JSON.stringify(message));
    return true;
  }

  #describeEnd(code: number, reason: string): SessionEnd {
    const end: SessionEnd = { code, reason, wasOpen: this.#wasOpen };
    if (this.#upgradeStatus !== undefined) end.upgradeStatus = this.#upgradeStatus;
    return end;
  }
}

/** Turns a coordinator base URL into the URL of its worker stream, `ws:` or `wss:`. */
export function streamUrl(coordinatorUrl: string): string {
  const url = new URL('workers/stream', withTrailingSlash(coordinatorUrl));
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.toString();
}

/** Adds a trailing slash so relative paths resolve below a base path such as `/coordinator`. */
export function withTrailingSlash(url: string): string {
  return url.endsWith('/') ? url : `${url}/`;
}

function rawDataToString(data: WebSocket.RawData): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString('utf8');
  return data.toString('utf8');
}
