import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { CloseCode, MAX_MESSAGE_BYTES, type NackMessage } from '../../proto/index.ts';
import type { Logger } from '../log.ts';
import { hashToken, type WorkerService } from '../services/workers.ts';
import type { Sql } from '../store/database.ts';
import type { InstanceIdentity, InstanceKey } from '../store/workers.ts';
import type { ChangeRecord } from '../store/writer.ts';
import type { ChangeFeed } from './feed.ts';
import { WorkerSession, type SessionHost, type SessionLimits } from './session.ts';
import { planResume, readSnapshot, touchesWorker } from './sync.ts';

export interface HubOptions {
  sql: Sql;
  feed: ChangeFeed;
  workers: WorkerService;
  log: Logger;
  epoch: string;
  coordinatorId: string;
  heartbeatIntervalMs: number;
  heartbeatMisses: number;
  limits: SessionLimits;
}

/** Most nack log lines per worker per minute; the rest are counted. */
const NACK_LOGS_PER_MINUTE = 3;

/**
 * Speaks the worker session protocol on `GET /workers/stream`: authenticates
 * session tokens, routes each change to the sessions of the workers it
 * touches, and writes acks and heartbeats to the database.
 */
export class Hub implements SessionHost {
  readonly epoch: string;
  readonly #options: HubOptions;
  readonly #log: Logger;
  readonly #server = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_BYTES });
  readonly #sessions = new Map<string, Set<WorkerSession>>();
  #beats = new Map<string, InstanceKey & { at: Date }>();
  #pongs = new WeakMap<WebSocket, number>();
  readonly #ackWrites = new Map<string, { revision: number; isWriting: boolean }>();
  readonly #nackLogs = new Map<string, { windowStart: number; logged: number; dropped: number }>();
  #timers: NodeJS.Timeout[] = [];
  #unsubscribe: () => void = () => {};

  constructor(options: HubOptions) {
    this.#options = options;
    this.#log = options.log;
    this.epoch = options.epoch;
  }

  get feedRevision(): number {
    return this.#options.feed.revision;
  }

  get sessionCount(): number {
    let count = 0;
    for (const set of this.#sessions.values()) count += set.size;
    return count;
  }

  start(): void {
    this.#unsubscribe = this.#options.feed.subscribe((changes) => this.#dispatch(changes));
    const flushMs = Math.max(50, Math.min(500, this.#options.heartbeatIntervalMs / 4));
    this.#timers.push(setInterval(() => void this.#flushHeartbeats(), flushMs));
    this.#timers.push(setInterval(() => this.#checkSockets(), this.#options.heartbeatIntervalMs));
  }

  /** Closes every session with `code` and stops the timers. */
  async stop(code: number = CloseCode.restarting): Promise<void> {
    this.#unsubscribe();
    for (const timer of this.#timers) clearInterval(timer);
    for (const set of this.#sessions.values()) {
      for (const session of set) session.close(code, 'coordinator shutting down');
    }
    await this.#flushHeartbeats();
  }

  /** Accepts an upgrade request for `/workers/stream`. */
  async handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const identity = await this.#authenticate(request).catch((error) => {
      this.#log.error({ err: error }, 'session token lookup failed');
      return 'unavailable' as const;
    });
    if (identity === 'unavailable') return rejectUpgrade(socket, 503, 'Service Unavailable');
    if (identity === null) return rejectUpgrade(socket, 401, 'Unauthorized');
    if (identity.workerStatus === 'deregistered') return rejectUpgrade(socket, 401, 'Unauthorized');
    this.#server.handleUpgrade(request, socket, head, (ws) => this.#accept(ws, identity));
  }

  async #authenticate(request: IncomingMessage): Promise<InstanceIdentity | null> {
    const match = /^Bearer ([^\s]+)$/.exec(request.headers.authorization ?? '');
    if (!match) return null;
    return this.#options.workers.findSession(hashToken(match[1]));
  }

  #accept(ws: WebSocket, identity: InstanceIdentity): void {
    const key = {
      workerId: identity.workerId,
      instanceId: identity.instanceId,
      generation: identity.generation,
    };
    const session = new WorkerSession({
      socket: ws,
      key,
      authority: identity.authority,
      host: this,
      limits: this.#options.limits,
      log: this.#log,
    });
    this.#pongs.set(ws, Date.now());
    ws.on('pong', () => this.#pongs.set(ws, Date.now()));
    const set = this.#sessions.get(key.workerId) ?? new Set();
    set.add(session);
    this.#sessions.set(key.workerId, set);
  }

  readSnapshot(workerId: string) {
    return readSnapshot(this.#options.sql, workerId);
  }

  planResume(workerId: string, fromRevision: number, digest: string) {
    return planResume(this.#options.sql, workerId, fromRevision, digest);
  }

  async open(session: WorkerSession, appliedRevision: number): Promise<boolean> {
    // One session per instance: an older one of the same instance here gives way.
    for (const other of this.#sessions.get(session.key.workerId) ?? []) {
      const isSameInstance = other !== session && other.key.instanceId === session.key.instanceId;
      if (isSameInstance) other.close(CloseCode.superseded, 'superseded by a newer session');
    }
    const isCurrent = await this.#options.workers.openSession(
      session.key,
      this.#options.coordinatorId,
      appliedRevision,
    );
    if (isCurrent) {
      this.#log.info(
        { worker_id: session.key.workerId, authority: session.authority, instance_id: session.key.instanceId },
        'worker connected',
      );
    }
    return isCurrent;
  }

  closed(session: WorkerSession): void {
    const set = this.#sessions.get(session.key.workerId);
    set?.delete(session);
    if (set?.size === 0) this.#sessions.delete(session.key.workerId);
    this.#log.info(
      { worker_id: session.key.workerId, instance_id: session.key.instanceId },
      'worker disconnected',
    );
    this.#options.workers.closeSession(session.key, this.#options.coordinatorId).catch((error) => {
      this.#log.warn({ err: error, worker_id: session.key.workerId }, 'recording a disconnect failed');
    });
  }

  /** Writes acks one at a time per instance; a newer ack replaces one still waiting. */
  ack(session: WorkerSession, revision: number): void {
    const id = instanceId(session.key);
    const entry = this.#ackWrites.get(id) ?? { revision: 0, isWriting: false };
    entry.revision = Math.max(entry.revision, revision);
    this.#ackWrites.set(id, entry);
    if (!entry.isWriting) void this.#writeAck(session.key, id, entry);
  }

  async #writeAck(key: InstanceKey, id: string, entry: { revision: number; isWriting: boolean }) {
    entry.isWriting = true;
    let written = 0;
    try {
      while (entry.revision > written) {
        written = entry.revision;
        await this.#options.workers.recordAck(key, written);
      }
    } catch (error) {
      this.#log.warn({ err: error, worker_id: key.workerId, revision: written }, 'recording an ack failed');
    } finally {
      entry.isWriting = false;
      if (entry.revision === written) this.#ackWrites.delete(id);
    }
  }

  nack(session: WorkerSession, message: NackMessage): void {
    const nack = { ...message, at: new Date().toISOString() };
    const { type: _type, ...stored } = nack;
    this.#options.workers.recordNack(session.key, stored).catch((error) => {
      this.#log.warn({ err: error, worker_id: session.key.workerId }, 'recording a nack failed');
    });
    this.#logNack(session, message);
  }

  #logNack(session: WorkerSession, message: NackMessage): void {
    const now = Date.now();
    const id = session.key.workerId;
    const entry = this.#nackLogs.get(id) ?? { windowStart: now, logged: 0, dropped: 0 };
    if (now - entry.windowStart >= 60_000) Object.assign(entry, { windowStart: now, logged: 0, dropped: 0 });
    this.#nackLogs.set(id, entry);
    if (entry.logged >= NACK_LOGS_PER_MINUTE) {
      entry.dropped += 1;
      return;
    }
    entry.logged += 1;
    this.#log.warn(
      {
        worker_id: id,
        authority: session.authority,
        revision: message.revision,
        reason: message.reason,
        error: message.error,
        repeats_not_logged: entry.dropped,
      },
      'worker rejected a change',
    );
  }

  heartbeat(session: WorkerSession, at: Date): void {
    this.#beats.set(instanceId(session.key), { ...session.key, at });
  }

  async #flushHeartbeats(): Promise<void> {
    if (this.#beats.size === 0) return;
    const beats = this.#beats;
    this.#beats = new Map();
    try {
      await this.#options.workers.writeHeartbeats([...beats.values()]);
    } catch (error) {
      // Keep them for the next flush, unless a newer beat of the same instance arrived.
      for (const [id, beat] of beats) if (!this.#beats.has(id)) this.#beats.set(id, beat);
      this.#log.warn({ err: error, instances: beats.size }, 'writing heartbeats failed; will retry');
    }
  }

  /** Closes sessions whose socket stopped responding to pings, or that read too slowly. */
  #checkSockets(): void {
    const now = Date.now();
    const silenceMs = this.#options.heartbeatIntervalMs * this.#options.heartbeatMisses;
    for (const client of this.#server.clients) {
      if (now - (this.#pongs.get(client) ?? now) > silenceMs) client.terminate();
      else client.ping();
    }
    for (const set of this.#sessions.values()) {
      for (const session of set) session.checkBackpressure(now);
    }
  }

  #dispatch(changes: ChangeRecord[]): void {
    for (const change of changes) {
      if (change.type.startsWith('worker.')) this.#applyWorkerEvent(change);
      else this.#routeChange(change);
    }
  }

  #routeChange(change: ChangeRecord): void {
    const workerIds = new Set([change.worker_id, change.prev_worker_id]);
    for (const workerId of workerIds) {
      if (!workerId) continue;
      for (const session of this.#sessions.get(workerId) ?? []) {
        if (touchesWorker(change, workerId)) session.enqueue(change);
      }
    }
  }

  #applyWorkerEvent(change: ChangeRecord): void {
    const sessions = [...(this.#sessions.get(String(change.worker_id)) ?? [])];
    const instance = change.worker?.instance_id;
    if (change.type === 'worker.lost') {
      for (const session of sessions) session.close(CloseCode.lost, 'declared lost; reconnect to resume');
    } else if (change.type === 'worker.deregistered') {
      for (const session of sessions) session.close(CloseCode.deregistered, 'worker deregistered');
    } else if (change.type === 'worker.registered') {
      // A registration of an instance supersedes every older session of it.
      const generation = Number(change.worker?.generation);
      for (const session of sessions) {
        const isOlder = session.key.instanceId === instance && session.key.generation < generation;
        if (isOlder) session.close(CloseCode.superseded, 'superseded by a newer registration');
      }
    }
  }
}

function instanceId(key: InstanceKey): string {
  return `${key.workerId}/${key.instanceId}`;
}

function rejectUpgrade(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}
