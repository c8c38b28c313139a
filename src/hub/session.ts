import * as v from 'valibot';
import type { WebSocket } from 'ws';
import {
  CloseCode,
  PROTOCOL_VERSION,
  TableDigest,
  WorkerMessageSchema,
  type Ack,
  type Heartbeat,
  type Hello,
  type NackMessage,
  type Route,
  type WorkerMessage,
} from '../../proto/index.ts';
import type { Logger } from '../log.ts';
import type { SyncMetrics } from '../metrics.ts';
import type { InstanceKey } from '../store/workers.ts';
import type { ChangeRecord } from '../store/writer.ts';
import {
  buildDiffs,
  refreshDiffText,
  type DiffText,
  type ResumePlan,
  type SnapshotOptions,
  type SnapshotSummary,
} from './sync.ts';

/** Hub operations a session calls. */
export interface SessionHost {
  readonly epoch: string;
  /** The last revision the change feed delivered. */
  readonly feedRevision: number;
  /**
   * Runs hello and snapshot work when an admission slot is free, so a storm
   * of reconnects waits in line instead of reading every table at once.
   */
  admit<T>(task: () => Promise<T>): Promise<T>;
  streamSnapshot(options: SnapshotOptions): Promise<SnapshotSummary>;
  planResume(workerId: string, fromRevision: number, digest: string): Promise<ResumePlan>;
  /** Returns the route on a worker whose last change has `revision`, if there is one. */
  findRouteAtRevision(workerId: string, revision: number): Promise<Route | null>;
  findRoute(routeId: string): Promise<Route | null>;
  /** Records the session as open; resolves false when the registration was superseded. */
  open(session: WorkerSession, appliedRevision: number): Promise<boolean>;
  closed(session: WorkerSession): void;
  /** Records an ack; `clearsNack` is false while a rejected route is still being retried. */
  ack(session: WorkerSession, revision: number, clearsNack: boolean): void;
  nack(session: WorkerSession, message: NackMessage): void;
  /** Records a heartbeat; `stats` may carry the routes active since the previous one. */
  heartbeat(session: WorkerSession, at: Date, stats?: Heartbeat['stats']): void;
}

export interface SessionLimits {
  helloTimeoutMs: number;
  /** Unsent bytes above which nothing new is written to the socket. */
  highWaterBytes: number;
  /** How long the socket may stay above the high-water mark before the session closes. */
  sendTimeoutMs: number;
  /** Messages a worker may send per second, besides one ack per message it received. */
  maxMessagesPerSecond: number;
  /** Target size of one snapshot or diff message, below the frame limit. */
  snapshotChunkBytes: number;
}

type State = 'awaiting_hello' | 'admitting' | 'syncing' | 'live' | 'closed';

const MAX_MALFORMED = 3;
const FIRST_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 60_000;
/** Routes fetched from the cursor at a time while streaming a snapshot. */
const SNAPSHOT_PAGE_SIZE = 1000;

/** A diff sent and not yet acknowledged. */
interface SentMessage {
  digest: string;
  routeIds: string[];
  commitTimes: number[];
}

/**
 * Resending of a diff the worker rejected without applying it: the table
 * stays at the acknowledged revision, so every later diff waits too.
 */
interface HeldBackoff {
  delayMs: number;
  timer: NodeJS.Timeout | null;
  /** Routes of the rejected diffs; a new change to one of them is sent at once. */
  routeIds: Set<string>;
}

/** A route the worker applied and acknowledged but could not serve. */
interface RouteRetry {
  revision: number;
  delayMs: number;
  timer: NodeJS.Timeout;
  /** Whether the worker rejected the route again since the last resend. */
  isRejectedAgain: boolean;
}

class SessionClosedError extends Error {
  override name = 'SessionClosedError';
}

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
  readonly #metrics: SyncMetrics | undefined;
  #state: State = 'awaiting_hello';
  #sentRevision = 0;
  #digest = new TableDigest();
  /** Diffs and snapshots sent and not yet acknowledged, by revision. */
  #sent = new Map<number, SentMessage>();
  #ackedRevision = 0;
  #ackedDigest = new TableDigest();
  /** Revision of the last snapshot started; older digest mismatches concern replaced tables. */
  #snapshotRevision = -1;
  /** Reason for another snapshot, requested while one was being sent. */
  #snapshotAgain: string | null = null;
  #pending: ChangeRecord[] = [];
  #malformedCount = 0;
  #window = { startedAt: 0, received: 0, sent: 0, sentBefore: 0 };
  #blockedSince: number | null = null;
  #blockedTimer: NodeJS.Timeout | null = null;
  #roomWaiters: Array<() => void> = [];
  #isFlushScheduled = false;
  #backoff: HeldBackoff | null = null;
  #retries = new Map<string, RouteRetry>();
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
    metrics?: SyncMetrics;
  }) {
    this.#socket = options.socket;
    this.key = options.key;
    this.authority = options.authority;
    this.#host = options.host;
    this.#limits = options.limits;
    this.#log = options.log;
    this.#metrics = options.metrics;
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

  /** Bytes written to the socket and not yet sent. */
  get bufferedBytes(): number {
    return this.#socket.bufferedAmount;
  }

  /** Closes the session, telling the worker why first. */
  close(code: number, reason: string): void {
    if (this.#isClosed()) return;
    this.#metrics?.sessionClosed(code);
    this.#sendText('error', JSON.stringify({ type: 'error', code: String(code), message: reason }));
    this.#socket.close(code, reason.slice(0, 120));
    this.#closed();
  }

  /** Takes route changes of this worker's table, in revision order. */
  enqueue(change: ChangeRecord): void {
    if (this.#isClosed()) return;
    this.#pending.push(change);
    const routeId = change.route_id;
    if (routeId && this.#backoff?.routeIds.has(routeId)) {
      // A new version of a rejected route may fix it: send now, not after the backoff.
      this.#background(this.#resendHeld(), 'resending a rejected diff');
      return;
    }
    if (routeId) this.#dropRetry(routeId);
    this.#scheduleFlush();
  }

  /** Closes the session when its socket has stayed backed up longer than the send timeout. */
  checkBackpressure(now: number): void {
    if (this.#isClosed()) return;
    if (this.#socket.bufferedAmount <= this.#limits.highWaterBytes) {
      this.#unblocked();
      return;
    }
    this.#blockedSince ??= now;
    this.#blockedTimer ??= setTimeout(() => {
      this.#blockedTimer = null;
      this.checkBackpressure(Date.now());
    }, this.#limits.sendTimeoutMs + 10);
    if (now - this.#blockedSince <= this.#limits.sendTimeoutMs) return;
    this.#log.warn(
      { worker_id: this.key.workerId, buffered_bytes: this.#socket.bufferedAmount },
      'worker reads too slowly; closing its session so it resumes',
    );
    this.close(CloseCode.tooSlow, 'too slow to read its messages');
  }

  #unblocked(): void {
    this.#blockedSince = null;
    if (this.#blockedTimer) clearTimeout(this.#blockedTimer);
    this.#blockedTimer = null;
    const waiters = this.#roomWaiters;
    this.#roomWaiters = [];
    for (const wake of waiters) wake();
    if (this.#pending.length > 0) this.#scheduleFlush();
  }

  #isBackedUp(): boolean {
    if (this.#socket.bufferedAmount <= this.#limits.highWaterBytes) return false;
    this.checkBackpressure(Date.now());
    return true;
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

  /** Sends the pending changes as diffs now, if the session can send. */
  flush(): void {
    this.#flush();
  }

  #flush(): void {
    if (this.#state !== 'live' || this.#backoff || this.#pending.length === 0) return;
    if (this.#isBackedUp()) return;
    const changes = this.#pending.filter((change) => change.revision > this.#sentRevision);
    this.#pending = [];
    if (changes.length === 0) return;
    // Changes left over from a resume were read from the database and may be ahead of the feed.
    const toRevision = Math.max(this.#host.feedRevision, (changes.at(-1) as ChangeRecord).revision);
    this.#sendDiffs(changes, toRevision, false);
  }

  /**
   * Sends the diffs from the sent table to `toRevision`. When the socket backs
   * up midway, the changes not sent yet go back to the pending ones, so a slow
   * worker's socket buffers at most about one diff beyond the high-water mark.
   */
  #sendDiffs(changes: ChangeRecord[], toRevision: number, isReplyRequired: boolean): void {
    const diffs = buildDiffs({
      workerId: this.key.workerId,
      epoch: this.#host.epoch,
      changes,
      fromRevision: this.#sentRevision,
      toRevision,
      digest: this.#digest,
      maxBytes: this.#limits.snapshotChunkBytes,
      isReplyRequired,
    });
    for (const [i, diff] of diffs.entries()) {
      this.#sendDiff(diff);
      const isLast = i === diffs.length - 1;
      if (isLast || this.#socket.bufferedAmount <= this.#limits.highWaterBytes) continue;
      this.#pending = [...changes.slice(diff.changesCarried), ...this.#pending];
      this.#isBackedUp();
      return;
    }
  }

  #sendDiff(diff: DiffText): void {
    this.#sendText('diff', diff.text);
    this.#advance(diff.revision, diff.digest, {
      digest: diff.digest.toHex(),
      routeIds: diff.routeIds,
      commitTimes: diff.commitTimes,
    });
  }

  #advance(revision: number, digest: TableDigest, sent: SentMessage): void {
    this.#sent.set(revision, sent);
    this.#sentRevision = revision;
    this.#digest = digest;
  }

  #requestSnapshot(reason: string): void {
    if (this.#state === 'syncing' || this.#state === 'admitting') {
      this.#snapshotAgain = reason;
      return;
    }
    this.#state = 'syncing';
    void this.#host
      .admit(() => this.#sendSnapshot(reason))
      .then(() => this.#goLive())
      .catch((error) => this.#syncFailed(error));
  }

  async #sendSnapshot(reason: string): Promise<void> {
    if (this.#isClosed()) throw new SessionClosedError();
    this.#state = 'syncing';
    this.#snapshotAgain = null;
    // A held backoff keeps its delay, so a worker that rejects snapshots too waits longer
    // each time.
    if (this.#backoff?.timer) clearTimeout(this.#backoff.timer);
    if (this.#backoff) this.#backoff.timer = null;
    let snapshot = { revision: 0, digest: '' };
    const summary = await this.#host.streamSnapshot({
      workerId: this.key.workerId,
      epoch: this.#host.epoch,
      chunkBytes: this.#limits.snapshotChunkBytes,
      pageSize: SNAPSHOT_PAGE_SIZE,
      onStart: (revision, digest) => {
        this.#snapshotRevision = revision;
        snapshot = { revision, digest };
      },
      send: async (text, isLast) => {
        await this.#waitForRoom();
        if (this.#isClosed()) throw new SessionClosedError();
        // The worker may ack the last message before the stream's transaction ends.
        if (isLast) this.#sentSnapshot(snapshot.revision, snapshot.digest);
        this.#sendText('snapshot', text);
      },
    });
    this.#log.info(
      {
        worker_id: this.key.workerId,
        revision: summary.revision,
        routes: summary.routeCount,
        messages: summary.messageCount,
        bytes: summary.bytes,
        reason,
      },
      'sent snapshot',
    );
  }

  #sentSnapshot(revision: number, digest: string): void {
    this.#pending = this.#pending.filter((change) => change.revision > revision);
    this.#sent.clear();
    this.#advance(revision, new TableDigest(digest), { digest, routeIds: [], commitTimes: [] });
  }

  /** Waits until the socket's unsent bytes fall below the high-water mark. */
  async #waitForRoom(): Promise<void> {
    while (!this.#isClosed() && this.#isBackedUp()) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.#roomWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  #goLive(): void {
    if (this.#isClosed()) return;
    this.#state = 'live';
    if (this.#snapshotAgain !== null) return this.#requestSnapshot(this.#snapshotAgain);
    this.#scheduleFlush();
  }

  #syncFailed(error: unknown): void {
    if (error instanceof SessionClosedError || this.#isClosed()) return;
    this.#log.error({ err: error, worker_id: this.key.workerId }, 'syncing a worker failed');
    this.close(CloseCode.restarting, 'coordinator failed to read the table; reconnect');
  }

  #receive(data: unknown, isBinary: boolean): void {
    if (this.#isClosed()) return;
    if (this.#isFlooding()) return;
    const message = parseMessage(data, isBinary);
    if (typeof message === 'string') return this.#malformed(message);
    this.#handle(message);
  }

  /** Counts messages per second; acks of what this session sent do not use up the budget. */
  #isFlooding(): boolean {
    const now = Date.now();
    const window = this.#window;
    if (now - window.startedAt >= 1000) {
      window.sentBefore = now - window.startedAt < 2000 ? window.sent : 0;
      window.startedAt = now;
      window.received = 0;
      window.sent = 0;
    }
    window.received += 1;
    const allowed = this.#limits.maxMessagesPerSecond + window.sent + window.sentBefore;
    if (window.received <= allowed) return false;
    this.close(CloseCode.tooSlow, 'too many messages');
    return true;
  }

  #handle(message: WorkerMessage): void {
    if (message.type === 'hello') return this.#hello(message);
    if (this.#state === 'awaiting_hello') {
      return this.#malformed(`expected hello, got ${message.type}`);
    }
    if (message.type === 'ack') return this.#ack(message);
    if (message.type === 'nack') return this.#nack(message);
    this.#host.heartbeat(this, new Date(), message.stats);
  }

  #hello(hello: Hello): void {
    if (this.#state !== 'awaiting_hello') return this.#malformed('hello was already received');
    clearTimeout(this.#helloTimer);
    this.#state = 'admitting';
    void this.#host
      .admit(() => this.#start(hello))
      .then(() => this.#goLive())
      .catch((error) => this.#syncFailed(error));
  }

  /** Plans the catch-up, records the session as open, and sends the snapshot or diff. */
  async #start(hello: Hello): Promise<void> {
    if (this.#isClosed()) throw new SessionClosedError();
    const plan = await this.#planHello(hello);
    if (this.#isClosed()) throw new SessionClosedError();
    const applied = plan.kind === 'diff' ? plan.fromRevision : 0;
    if (!(await this.#host.open(this, applied))) {
      this.close(CloseCode.superseded, 'superseded by a newer registration');
      throw new SessionClosedError();
    }
    if (this.#isClosed()) throw new SessionClosedError();
    if (plan.kind === 'snapshot') return this.#sendSnapshot(plan.reason);
    this.#state = 'syncing';
    this.#sentRevision = plan.fromRevision;
    this.#digest = plan.digest;
    this.#ackedRevision = plan.fromRevision;
    this.#ackedDigest = plan.digest;
    // Changes that landed after the plan's read are still pending and follow as a diff.
    this.#pending = this.#pending.filter((change) => change.revision > plan.revision);
    this.#sendDiffs(plan.changes, plan.revision, true);
  }

  async #planHello(hello: Hello): Promise<ResumePlan> {
    if (hello.epoch !== this.#host.epoch) return { kind: 'snapshot', reason: 'new or other epoch' };
    if (hello.applied_revision === undefined || hello.digest === undefined) {
      return { kind: 'snapshot', reason: 'no resume fields' };
    }
    return this.#host.planResume(this.key.workerId, hello.applied_revision, hello.digest);
  }

  #ack(ack: Ack): void {
    if (ack.revision > this.#sentRevision) {
      return this.#malformed(`ack for revision ${ack.revision}, which was never sent`);
    }
    const sent = this.#sent.get(ack.revision);
    // An ack of a message that a later snapshot replaced, or a repeated ack, changes nothing.
    if (sent === undefined) return;
    if (sent.digest !== ack.digest) {
      this.#requestSnapshot('acknowledged digest differs from the one sent');
      return;
    }
    this.#observeAcknowledged(ack.revision);
    for (const revision of this.#sent.keys()) {
      if (revision <= ack.revision) this.#sent.delete(revision);
    }
    if (ack.revision < this.#ackedRevision) return;
    this.#ackedRevision = ack.revision;
    this.#ackedDigest = new TableDigest(ack.digest);
    if (this.#backoff && ack.revision >= this.#sentRevision) this.#endBackoff();
    this.#host.ack(this, ack.revision, this.#backoff === null && this.#retries.size === 0);
  }

  /** Reports commit-to-ack latency of each change that the acknowledged diffs carried. */
  #observeAcknowledged(revision: number): void {
    if (!this.#metrics) return;
    const now = Date.now();
    for (const [sentRevision, sent] of this.#sent) {
      if (sentRevision > revision) continue;
      for (const at of sent.commitTimes) this.#metrics.changeAcknowledged(now - at);
    }
  }

  #nack(nack: NackMessage): void {
    this.#host.nack(this, nack);
    if (nack.reason === 'digest_mismatch') {
      // A mismatch of a table that a later snapshot replaced needs no new snapshot.
      if (nack.revision < this.#snapshotRevision) return;
      this.#requestSnapshot('worker reported a digest mismatch');
      return;
    }
    if (nack.revision > this.#ackedRevision) this.#startBackoff(nack.revision);
    else this.#background(this.#retryAppliedRoute(nack.revision), 'scheduling a rejected route');
  }

  /**
   * Rewinds to the last acknowledged table and waits before sending again, so
   * a worker that rejects a diff is not fed the same change in a tight loop.
   */
  #startBackoff(revision: number): void {
    const routeIds = new Set([...this.#sent.values()].flatMap((sent) => sent.routeIds));
    const delayMs = Math.min((this.#backoff?.delayMs ?? FIRST_BACKOFF_MS / 2) * 2, MAX_BACKOFF_MS);
    if (this.#backoff?.timer) clearTimeout(this.#backoff.timer);
    const timer = this.#scheduleHeldResend(delayMs);
    this.#backoff = { delayMs, routeIds, timer };
    this.#log.debug({ worker_id: this.key.workerId, revision, delay_ms: delayMs }, 'backing off');
  }

  async #resendHeld(): Promise<void> {
    const backoff = this.#backoff;
    if (!backoff || this.#isClosed()) return;
    if (backoff.timer) clearTimeout(backoff.timer);
    backoff.timer = null;
    let plan: ResumePlan;
    try {
      const digest = this.#ackedDigest.toHex();
      plan = await this.#host.planResume(this.key.workerId, this.#ackedRevision, digest);
    } catch (error) {
      // Try again after the same delay, so the held diffs are not stuck for good.
      if (this.#backoff === backoff && !this.#isClosed()) {
        backoff.timer = this.#scheduleHeldResend(backoff.delayMs);
      }
      throw error;
    }
    if (this.#isClosed() || this.#state !== 'live') return;
    if (plan.kind === 'snapshot') return this.#requestSnapshot(plan.reason);
    this.#pending = this.#pending.filter((change) => change.revision > plan.revision);
    for (const revision of this.#sent.keys()) {
      if (revision > plan.fromRevision) this.#sent.delete(revision);
    }
    this.#sentRevision = plan.fromRevision;
    this.#digest = plan.digest;
    // The backoff stays in place, holding other diffs, until the worker acks or nacks this one.
    this.#sendDiffs(plan.changes, plan.revision, true);
    // A worker that sends neither an ack nor a nack gets it again after twice the delay.
    if (this.#backoff !== backoff) return;
    const watchdogMs = Math.min(backoff.delayMs * 2, MAX_BACKOFF_MS);
    backoff.timer = this.#scheduleHeldResend(watchdogMs);
  }

  #endBackoff(): void {
    if (this.#backoff?.timer) clearTimeout(this.#backoff.timer);
    this.#backoff = null;
    this.#scheduleFlush();
  }

  /**
   * Sends a route again, after a backoff that doubles from 1 s, when the
   * worker applied it but reported that it could not serve it. Other diffs
   * go on meanwhile, since the worker's table did move on.
   */
  async #retryAppliedRoute(revision: number): Promise<void> {
    const route = await this.#host.findRouteAtRevision(this.key.workerId, revision);
    if (!route || this.#isClosed()) return;
    const retry = this.#retries.get(route.id);
    if (retry?.revision === revision) {
      // Rejected again: the next resend, already scheduled at the doubled delay, goes out.
      retry.isRejectedAgain = true;
      return;
    }
    this.#dropRetry(route.id);
    const timer = this.#scheduleRouteResend(route.id, FIRST_BACKOFF_MS);
    this.#retries.set(route.id, {
      revision,
      delayMs: FIRST_BACKOFF_MS,
      timer,
      isRejectedAgain: true,
    });
  }

  async #resendRoute(routeId: string): Promise<void> {
    const retry = this.#retries.get(routeId);
    if (!retry || this.#isClosed()) return;
    if (!retry.isRejectedAgain) {
      // The last resend drew no new rejection: the worker serves the route now.
      this.#retries.delete(routeId);
      return;
    }
    let route: Route | null;
    try {
      route = await this.#host.findRoute(routeId);
    } catch (error) {
      if (this.#retries.get(routeId) === retry) {
        retry.timer = this.#scheduleRouteResend(routeId, retry.delayMs);
      }
      throw error;
    }
    if (this.#isClosed() || this.#retries.get(routeId) !== retry) return;
    const isUnchanged =
      route?.worker_id === this.key.workerId &&
      route.revision === retry.revision &&
      route.revision <= this.#sentRevision;
    if (!route || !isUnchanged) {
      this.#retries.delete(routeId);
      return;
    }
    const isBusy = this.#state !== 'live' || this.#backoff !== null || this.#isBackedUp();
    if (!isBusy) {
      this.#sendRefresh(route);
      retry.isRejectedAgain = false;
      retry.delayMs = Math.min(retry.delayMs * 2, MAX_BACKOFF_MS);
    }
    retry.timer = this.#scheduleRouteResend(routeId, retry.delayMs);
  }

  /** Sends again a route the worker already has, leaving its table's revision as it is. */
  #sendRefresh(route: Route): void {
    const digest = this.#digest.toHex();
    this.#sendText('diff', refreshDiffText(this.#host.epoch, this.#sentRevision, digest, [route]));
    const sent = this.#sent.get(this.#sentRevision);
    if (sent) sent.routeIds.push(route.id);
    else this.#sent.set(this.#sentRevision, { digest, routeIds: [route.id], commitTimes: [] });
  }

  #dropRetry(routeId: string): void {
    const retry = this.#retries.get(routeId);
    if (!retry) return;
    clearTimeout(retry.timer);
    this.#retries.delete(routeId);
  }

  #scheduleHeldResend(delayMs: number): NodeJS.Timeout {
    const resend = () => this.#background(this.#resendHeld(), 'resending a rejected diff');
    return setTimeout(resend, delayMs);
  }

  #scheduleRouteResend(routeId: string, delayMs: number): NodeJS.Timeout {
    const resend = () => this.#background(this.#resendRoute(routeId), 'resending a route');
    return setTimeout(resend, delayMs);
  }

  /** Runs work that nothing awaits; a failure (a database error) is logged, not thrown. */
  #background(work: Promise<void>, what: string): void {
    work.catch((error) => {
      this.#log.warn({ err: error, worker_id: this.key.workerId }, `${what} failed`);
    });
  }

  #malformed(problem: string): void {
    this.#malformedCount += 1;
    const error = { type: 'error', code: 'invalid_message', message: problem };
    this.#sendText('error', JSON.stringify(error));
    if (this.#malformedCount >= MAX_MALFORMED) {
      this.close(CloseCode.malformed, `${MAX_MALFORMED} malformed messages`);
    }
  }

  #helloTimedOut(): void {
    if (this.#state === 'awaiting_hello') this.close(CloseCode.helloTimeout, 'no hello in time');
  }

  #sendText(type: string, text: string): void {
    if (this.#socket.readyState !== this.#socket.OPEN) return;
    this.#window.sent += 1;
    this.#socket.send(text, () => this.#written());
    this.#metrics?.messageSent(type, Buffer.byteLength(text));
  }

  /** Runs when the socket has written a message out: room may have opened up. */
  #written(): void {
    if (this.#isClosed() || this.#blockedSince === null) return;
    if (this.#socket.bufferedAmount <= this.#limits.highWaterBytes) this.#unblocked();
  }

  #closed(): void {
    if (this.#isClosed()) return;
    this.#state = 'closed';
    clearTimeout(this.#helloTimer);
    if (this.#backoff?.timer) clearTimeout(this.#backoff.timer);
    if (this.#blockedTimer) clearTimeout(this.#blockedTimer);
    for (const retry of this.#retries.values()) clearTimeout(retry.timer);
    this.#retries.clear();
    for (const wake of this.#roomWaiters) wake();
    this.#roomWaiters = [];
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

export { PROTOCOL_VERSION };
