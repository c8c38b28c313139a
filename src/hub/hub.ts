import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import PQueue from 'p-queue';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  CloseCode,
  MAX_MESSAGE_BYTES,
  type Heartbeat,
  type Nack,
  type NackMessage,
} from '../../proto/index.ts';
import type { Logger } from '../log.ts';
import type { SyncMetrics } from '../metrics.ts';
import { hashToken, type WorkerService } from '../services/workers.ts';
import type { Sql } from '../store/database.ts';
import { findRoute, workerRouteAtRevision } from '../store/routes.ts';
import type { AckRecord, InstanceIdentity, InstanceKey } from '../store/workers.ts';
import type { ChangeRecord } from '../store/writer.ts';
import type { ChangeFeed } from './feed.ts';
import { WorkerSession, type SessionHost, type SessionLimits } from './session.ts';
import { planResume, streamSnapshot, touchesWorker, type SnapshotOptions } from './sync.ts';

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
  /**
   * Sessions whose hello or snapshot is being worked on at once; the rest
   * wait in line, so a reconnect storm cannot read every table together.
   */
  admissionConcurrency: number;
  /** Changes since a resumed revision above which the worker gets a snapshot instead. */
  maxResumeChanges: number;
  /** Counts messages, acks, nacks and closes of every session. */
  metrics?: SyncMetrics;
}

/** Most nack log lines per worker per minute; the rest are counted. */
const NACK_LOGS_PER_MINUTE = 3;

/**
 * Open sessions one worker may hold on one coordinator: one per instance of a
 * high-availability set, with room for reconnects that overlap a close.
 */
const MAX_SESSIONS_PER_WORKER = 64;

/** Pause before writing acks again whose rows were locked, in ms. */
const SKIPPED_ACK_RETRY_MS = 5;

/** A write of an instance's sync state, in the order its messages arrived. */
type StatusWrite =
  | { kind: 'ack'; revision: number; clearsNack: boolean }
  | { kind: 'nack'; nack: Nack };

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
  /** The heartbeat write in progress; ticks that find one running skip rather than pile up. */
  #beatsFlush: Promise<void> | null = null;
  /** Heartbeats received before this time (ms since the epoch) are in the database. */
  #beatsWrittenAt = Date.now();
  #pongs = new WeakMap<WebSocket, number>();
  /** Acks and nacks not written yet, per instance, in arrival order. */
  #statusWrites = new Map<string, { key: InstanceKey; writes: StatusWrite[] }>();
  #statusFlush: Promise<void> | null = null;
  #isStatusFlushScheduled = false;
  /** Set after a failed ack write, so the retry waits instead of spinning. */
  #statusRetryDelayMs = 0;
  readonly #admission: PQueue;
  readonly #nackLogs = new Map<string, { windowStart: number; logged: number; dropped: number }>();
  #timers: NodeJS.Timeout[] = [];
  #unsubscribe: () => void = () => {};

  constructor(options: HubOptions) {
    this.#options = options;
    this.#log = options.log;
    this.epoch = options.epoch;
    this.#admission = new PQueue({ concurrency: options.admissionConcurrency });
  }

  get feedRevision(): number {
    return this.#options.feed.revision;
  }

  /**
   * The time (ms since the epoch) before which every heartbeat this hub received
   * is in the database. Lost-worker checks trust the stored heartbeat times only
   * while this keeps up with the clock.
   */
  get heartbeatsWrittenAt(): number {
    const isIdle = this.#beats.size === 0 && this.#beatsFlush === null;
    return isIdle ? Date.now() : this.#beatsWrittenAt;
  }

  get sessionCount(): number {
    let count = 0;
    for (const set of this.#sessions.values()) count += set.size;
    return count;
  }

  /** Bytes written to worker sockets and not yet sent, summed over all of them. */
  get bufferedBytes(): number {
    let bytes = 0;
    for (const client of this.#server.clients) bytes += client.bufferedAmount;
    return bytes;
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
    // The first call may only wait for a write already running; the second writes the rest.
    await this.#flushHeartbeats();
    await this.#flushHeartbeats();
    await this.#statusFlush;
    if (this.#statusWrites.size > 0) await this.#flushStatus();
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
    if ((this.#sessions.get(identity.workerId)?.size ?? 0) >= MAX_SESSIONS_PER_WORKER) {
      this.#log.warn({ worker_id: identity.workerId }, 'too many sessions for one worker; rejected');
      return rejectUpgrade(socket, 429, 'Too Many Requests');
    }
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
      metrics: this.#options.metrics,
    });
    this.#pongs.set(ws, Date.now());
    ws.on('pong', () => this.#pongs.set(ws, Date.now()));
    const set = this.#sessions.get(key.workerId) ?? new Set();
    set.add(session);
    this.#sessions.set(key.workerId, set);
  }

  /** Sessions waiting for an admission slot, and those holding one. */
  get admission(): { waiting: number; running: number } {
    return { waiting: this.#admission.size, running: this.#admission.pending };
  }

  admit<T>(task: () => Promise<T>): Promise<T> {
    return this.#admission.add(task, { throwOnTimeout: true });
  }

  streamSnapshot(options: SnapshotOptions) {
    return streamSnapshot(this.#options.sql, options);
  }

  planResume(workerId: string, fromRevision: number, digest: string) {
    const maxChanges = this.#options.maxResumeChanges;
    return planResume(this.#options.sql, { workerId, fromRevision, digest, maxChanges });
  }

  findRouteAtRevision(workerId: string, revision: number) {
    return workerRouteAtRevision(this.#options.sql, workerId, revision);
  }

  findRoute(routeId: string) {
    return findRoute(this.#options.sql, routeId);
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

  ack(session: WorkerSession, revision: number, clearsNack: boolean): void {
    this.#queueStatus(session.key, { kind: 'ack', revision, clearsNack });
  }

  nack(session: WorkerSession, message: NackMessage): void {
    const { type: _type, ...nack } = { ...message, at: new Date().toISOString() };
    this.#queueStatus(session.key, { kind: 'nack', nack });
    this.#options.metrics?.nackReceived(message.reason);
    this.#logNack(session, message);
  }

  /** Queues an ack or nack for writing; acks waiting back to back merge into the newest. */
  #queueStatus(key: InstanceKey, write: StatusWrite): void {
    const id = instanceId(key);
    const entry = this.#statusWrites.get(id) ?? { key, writes: [] };
    this.#statusWrites.set(id, entry);
    const last = entry.writes.at(-1);
    if (last?.kind === 'ack' && write.kind === 'ack') {
      last.revision = Math.max(last.revision, write.revision);
      last.clearsNack = write.clearsNack;
    } else {
      entry.writes.push(write);
    }
    this.#scheduleStatusFlush();
  }

  /**
   * Flushes at the end of this turn, or after the flush in flight: under load
   * the acks of many sessions share one statement, and alone none waits.
   */
  #scheduleStatusFlush(): void {
    if (this.#isStatusFlushScheduled || this.#statusFlush) return;
    this.#isStatusFlushScheduled = true;
    const run = () => {
      this.#isStatusFlushScheduled = false;
      this.#statusFlush = this.#flushStatus().finally(() => {
        this.#statusFlush = null;
        if (this.#statusWrites.size > 0) this.#scheduleStatusFlush();
      });
    };
    if (this.#statusRetryDelayMs > 0) setTimeout(run, this.#statusRetryDelayMs).unref();
    else setImmediate(run);
  }

  /**
   * Writes the queued acks and nacks. Acks of instances with nothing else
   * queued go in one statement. An instance with a nack queued has its writes
   * run in arrival order, so an ack never overwrites a later nack or the reverse.
   */
  async #flushStatus(): Promise<void> {
    const entries = [...this.#statusWrites.values()];
    this.#statusWrites = new Map();
    const acks: AckRecord[] = [];
    const ordered: Array<{ key: InstanceKey; writes: StatusWrite[] }> = [];
    for (const entry of entries) {
      const [write] = entry.writes;
      if (entry.writes.length === 1 && write.kind === 'ack') acks.push({ ...entry.key, ...write });
      else ordered.push(entry);
    }
    const writes = ordered.map((entry) => this.#writeInOrder(entry));
    await Promise.all([this.#writeAcks(acks), ...writes]);
  }

  async #writeAcks(acks: AckRecord[]): Promise<void> {
    if (acks.length === 0) return;
    try {
      const skipped = await this.#options.workers.recordAcks(acks);
      // Rows locked by a write transaction free up within milliseconds.
      this.#statusRetryDelayMs = skipped.length > 0 ? SKIPPED_ACK_RETRY_MS : 0;
      for (const ack of skipped) this.#requeueAck(ack);
    } catch (error) {
      // Queued again behind any newer ack of the same instance, and retried after a pause,
      // because a worker that is in sync sends no further ack to carry its state.
      this.#statusRetryDelayMs = Math.min(Math.max(this.#statusRetryDelayMs * 2, 100), 5000);
      this.#log.warn(
        { err: error, instances: acks.length, retry_in_ms: this.#statusRetryDelayMs },
        'recording acks failed; will retry',
      );
      for (const ack of acks) this.#requeueAck(ack);
    }
  }

  #requeueAck(ack: AckRecord): void {
    const { revision, clearsNack, ...key } = ack;
    const entry = this.#statusWrites.get(instanceId(key));
    if (!entry) {
      const writes: StatusWrite[] = [{ kind: 'ack', revision, clearsNack }];
      this.#statusWrites.set(instanceId(key), { key, writes });
      return;
    }
    const first = entry.writes[0];
    if (first.kind === 'ack') first.revision = Math.max(first.revision, revision);
    else entry.writes.unshift({ kind: 'ack', revision, clearsNack });
  }

  async #writeInOrder(entry: { key: InstanceKey; writes: StatusWrite[] }): Promise<void> {
    const { key } = entry;
    for (const write of entry.writes) {
      try {
        const { workers } = this.#options;
        if (write.kind === 'ack') await workers.recordAck(key, write.revision, write.clearsNack);
        else await workers.recordNack(key, write.nack);
      } catch (error) {
        const fields = { err: error, worker_id: key.workerId, instance_id: key.instanceId };
        this.#log.warn(fields, `recording a ${write.kind} failed`);
      }
    }
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

  heartbeat(session: WorkerSession, at: Date, stats?: Heartbeat['stats']): void {
    this.#beats.set(instanceId(session.key), { ...session.key, at });
    // Route activity feeds idle expiry; the worker service batches its writes.
    const routes = stats?.routes;
    if (routes && routes.length > 0) this.#options.workers.recordActivity(session.key.workerId, routes);
  }

  #flushHeartbeats(): Promise<void> {
    this.#beatsFlush ??= this.#writeHeartbeats().finally(() => {
      this.#beatsFlush = null;
    });
    return this.#beatsFlush;
  }

  async #writeHeartbeats(): Promise<void> {
    const startedAt = Date.now();
    if (this.#beats.size === 0) {
      this.#beatsWrittenAt = startedAt;
      return;
    }
    const beats = this.#beats;
    this.#beats = new Map();
    try {
      await this.#options.workers.writeHeartbeats([...beats.values()]);
      this.#beatsWrittenAt = startedAt;
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

  /**
   * Hands each change to the sessions of the workers it touches, then sends
   * their diffs at once: the changes of one commit arrive together, so each
   * session folds them into one diff, written before the writes' responses.
   */
  #dispatch(changes: ChangeRecord[]): void {
    const touched = new Set<WorkerSession>();
    for (const change of changes) {
      if (change.type.startsWith('worker.')) this.#applyWorkerEvent(change);
      else this.#routeChange(change, touched);
    }
    for (const session of touched) session.flush();
  }

  #routeChange(change: ChangeRecord, touched: Set<WorkerSession>): void {
    const workerIds = new Set([change.worker_id, change.prev_worker_id]);
    for (const workerId of workerIds) {
      if (!workerId) continue;
      for (const session of this.#sessions.get(workerId) ?? []) {
        if (!touchesWorker(change, workerId)) continue;
        session.enqueue(change);
        touched.add(session);
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
