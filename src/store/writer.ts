import {
  TableDigest,
  type EventType,
  type PreviousPlacement,
  type Route,
  type WorkerEventSubject,
} from '../../proto/index.ts';
import { AppError, ConflictError, DatabaseUnavailableError } from '../errors.ts';
import type { WriterMetrics } from '../metrics.ts';
import { pipelinedTransaction, type ReservedSql, type Sql } from './database.ts';

/** One row of the change log, exactly as stored. */
export interface ChangeRecord {
  revision: number;
  type: EventType;
  at: string;
  route_id: string | null;
  session_id: string | null;
  /** The worker the route is on after the change, or the subject of a worker event. */
  worker_id: string | null;
  /** The worker the route was on before the change; null for a created route. */
  prev_worker_id: string | null;
  prev_revision: number | null;
  route: Route | null;
  worker: WorkerEventSubject | null;
  previous: PreviousPlacement | null;
  reason: string | null;
}

export type NewChange = Partial<Omit<ChangeRecord, 'revision' | 'at' | 'type'>> & {
  type: EventType;
};

/**
 * The transaction a write job runs in. It holds the lock on the revision
 * counter, so revisions handed out here are consecutive and commit in order.
 */
export class WriteTx {
  readonly sql: ReservedSql;
  readonly epoch: string;
  readonly now: Date;
  readonly changes: ChangeRecord[] = [];
  /** Writes sent without waiting for their results; the commit waits for them. */
  readonly sent: Array<Promise<unknown>> = [];
  #revision: number;
  #reserved: number | null = null;

  constructor(sql: ReservedSql, revision: number, epoch: string, now: Date) {
    this.sql = sql;
    this.#revision = revision;
    this.epoch = epoch;
    this.now = now;
  }

  /** Changes recorded and writes sent so far, to tell whether a failed job wrote anything. */
  get writeCount(): number {
    return this.changes.length + this.sent.length;
  }

  /** The last revision handed out, or the stored one before any. */
  get revision(): number {
    return this.#revision;
  }

  /** Reserves the next revision; the next `record` call must use it. */
  nextRevision(): number {
    if (this.#reserved !== null) throw new Error(`Revision ${this.#reserved} was never recorded`);
    this.#reserved = this.#revision + 1;
    return this.#reserved;
  }

  /**
   * Sends a write whose result nothing needs, so it travels with the next
   * statement instead of costing a round trip. A failure fails the commit.
   */
  send(write: Promise<unknown>): void {
    write.catch(() => {});
    this.sent.push(write);
  }

  /** Adds a change-log row at the reserved revision (reserving one when none is). */
  record(change: NewChange): ChangeRecord {
    const revision = this.#reserved ?? this.nextRevision();
    this.#reserved = null;
    this.#revision = revision;
    const row: ChangeRecord = {
      revision,
      at: this.now.toISOString(),
      route_id: null,
      session_id: null,
      worker_id: null,
      prev_worker_id: null,
      prev_revision: null,
      route: null,
      worker: null,
      previous: null,
      reason: null,
      ...change,
    };
    this.changes.push(row);
    return row;
  }

  /**
   * Writes the change log, the revision counter, each touched worker's target
   * revision, table digest and route count, and each changed route's JSON, in
   * one statement. Throws at once, before sending anything, when a reserved
   * revision was never recorded.
   */
  finish(): Promise<unknown> {
    if (this.#reserved !== null) throw new Error(`Revision ${this.#reserved} was never recorded`);
    if (this.changes.length === 0) return Promise.resolve();
    const targets = changedTables(this.changes);
    const wires = routeTexts(this.changes);
    const log = JSON.stringify(this.changes);
    return this.sql`
      WITH counter AS (UPDATE meta SET revision = ${this.#revision}),
      log AS (
        INSERT INTO changes
        SELECT * FROM jsonb_populate_recordset(NULL::changes, ${log}::text::jsonb)
      ),
      wire AS (
        UPDATE routes r SET wire = w.wire
        FROM jsonb_to_recordset(${JSON.stringify(wires)}::text::jsonb) AS w (id uuid, wire text)
        -- The id list gives the planner an index condition whatever its estimate of w.
        WHERE r.id = w.id AND r.id = ANY (${wires.map((wire) => wire.id)}::uuid[])
      ),
      target AS (
        UPDATE workers w SET target_revision = t.revision,
          digest_high = w.digest_high # t.high, digest_low = w.digest_low # t.low,
          route_count = w.route_count + t.count
        FROM jsonb_to_recordset(${JSON.stringify(targets)}::text::jsonb)
          AS t (id uuid, revision bigint, high bigint, low bigint, count integer)
        WHERE w.id = t.id
      )
      SELECT pg_notify('appproxy_changes', ${String(this.#revision)})`.execute();
  }
}

/**
 * Returns the JSON of each route as its last change in the batch left it, for
 * the routes that still exist. A route whose last change created it got its
 * JSON with its INSERT.
 */
function routeTexts(changes: ChangeRecord[]): Array<{ id: string; wire: string }> {
  const last = new Map<string, ChangeRecord>();
  for (const change of changes) {
    if (change.type.startsWith('route.') && change.route_id) last.set(change.route_id, change);
  }
  const texts: Array<{ id: string; wire: string }> = [];
  for (const [id, change] of last) {
    if (change.type === 'route.deleted' || change.type === 'route.created' || !change.route) continue;
    texts.push({ id, wire: wireText(change.route) });
  }
  return texts;
}

/** Returns a route's JSON without its derived status, as the `wire` column stores it. */
export function wireText(route: Route): string {
  const { status: _status, ...rest } = route;
  return JSON.stringify(rest);
}

/**
 * A worker whose table changed: its last such revision, and how its digest
 * and its route count change.
 */
interface TableChange {
  id: string;
  revision: number;
  /** Routes added minus routes removed. */
  count: number;
  /** The digest delta as two signed 64-bit halves in decimal, as the workers row stores it. */
  high: string;
  low: string;
}

/** Returns, per worker whose table these changes touch, the last such revision and digest delta. */
function changedTables(changes: ChangeRecord[]): TableChange[] {
  const tables = new Map<string, { revision: number; delta: TableDigest; count: number }>();
  const touch = (workerId: string, revision: number) => {
    const table = tables.get(workerId) ?? { revision, delta: new TableDigest(), count: 0 };
    table.revision = revision;
    tables.set(workerId, table);
    return table;
  };
  for (const change of changes) {
    if (!change.type.startsWith('route.') || change.route_id === null) continue;
    if (change.prev_worker_id) {
      const table = touch(change.prev_worker_id, change.revision);
      table.delta.toggle(change.route_id, Number(change.prev_revision));
      table.count -= 1;
    }
    if (change.worker_id && change.type !== 'route.deleted') {
      const table = touch(change.worker_id, change.revision);
      table.delta.toggle(change.route_id, change.revision);
      table.count += 1;
    } else if (change.worker_id) {
      touch(change.worker_id, change.revision);
    }
  }
  return [...tables].map(([id, { revision, delta, count }]) => ({
    id,
    revision,
    count,
    ...digestHalves(delta),
  }));
}

function digestHalves(digest: TableDigest): { high: string; low: string } {
  const bytes = Buffer.from(digest.toHex(), 'hex');
  return { high: String(bytes.readBigInt64BE(0)), low: String(bytes.readBigInt64BE(8)) };
}

/**
 * A unit of work run inside a write transaction. It may throw an AppError
 * only before its first write, because other jobs of the batch commit anyway.
 */
export type WriteJob<T> = (tx: WriteTx) => Promise<T>;

interface QueuedJob {
  job: WriteJob<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  isSettled: boolean;
  timer: NodeJS.Timeout;
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown };

export interface WriterOptions {
  /** Most jobs sharing one transaction. */
  maxBatch: number;
  /** A job not committed by then fails with DatabaseUnavailableError, in ms. */
  timeoutMs: number;
  /** Called with the rows of each committed transaction, in revision order. */
  onCommit: (changes: ChangeRecord[]) => void;
  /** Called with the last revision of a transaction just before its COMMIT is sent. */
  onCommitting?: (revision: number) => void;
  /** Called when a transaction that was committing failed. Its outcome may be unknown. */
  onCommitFailed?: () => void;
  /** Receives the size of each committed batch. */
  metrics?: WriterMetrics;
}

/**
 * Runs write jobs with group commit: jobs that arrive while a transaction is
 * running share the next one, so one fsync serves many writes.
 */
export class Writer {
  readonly #sql: Sql;
  readonly #options: WriterOptions;
  #queue: QueuedJob[] = [];
  #isRunning = false;

  constructor(sql: Sql, options: WriterOptions) {
    this.#sql = sql;
    this.#options = options;
  }

  run<T>(job: WriteJob<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const queued: QueuedJob = {
        job,
        resolve: resolve as (value: unknown) => void,
        reject,
        isSettled: false,
        timer: setTimeout(() => this.#expire(queued), this.#options.timeoutMs),
      };
      this.#queue.push(queued);
      this.#drain();
    });
  }

  #expire(queued: QueuedJob): void {
    this.#queue = this.#queue.filter((item) => item !== queued);
    settle(queued, { ok: false, error: new DatabaseUnavailableError() });
  }

  async #drain(): Promise<void> {
    if (this.#isRunning) return;
    this.#isRunning = true;
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, this.#options.maxBatch);
        await this.#runBatch(batch);
      }
    } finally {
      this.#isRunning = false;
    }
  }

  async #runBatch(batch: QueuedJob[]): Promise<void> {
    let committed: { outcomes: Outcome[]; changes: ChangeRecord[] };
    try {
      committed = await this.#commit(batch);
    } catch (error) {
      if (batch.length === 1) return settle(batch[0], { ok: false, error: toAppError(error) });
      // One job broke the shared transaction: run each alone so the others still commit.
      // NOTE: a connection lost during COMMIT leaves the outcome unknown, and the rerun
      // may then apply a job twice (a delete then returns 404 the second time).
      for (const queued of batch) await this.#runBatch([queued]);
      return;
    }
    // Outside the try: the batch has committed, so nothing here may run it again.
    try {
      this.#options.metrics?.batchCommitted(batch.length);
      if (committed.changes.length > 0) this.#options.onCommit(committed.changes);
    } finally {
      batch.forEach((queued, i) => settle(queued, committed.outcomes[i]));
    }
  }

  /** Runs a batch in one transaction, with no round trips for BEGIN and COMMIT. */
  #commit(batch: QueuedJob[]): Promise<{ outcomes: Outcome[]; changes: ChangeRecord[] }> {
    let isAnnounced = false;
    return pipelinedTransaction(this.#sql, async (sql) => {
      const [meta] = await sql`SELECT revision, epoch FROM meta FOR UPDATE`;
      const tx = new WriteTx(sql, Number(meta.revision), String(meta.epoch), new Date());
      const outcomes: Outcome[] = [];
      for (const queued of batch) outcomes.push(await runJob(tx, queued));
      const finished = tx.finish();
      if (tx.changes.length > 0) {
        isAnnounced = true;
        this.#options.onCommitting?.(tx.revision);
      }
      return { value: { outcomes, changes: tx.changes }, inFlight: [...tx.sent, finished] };
    }).catch((error) => {
      if (isAnnounced) this.#options.onCommitFailed?.();
      throw error;
    });
  }
}

async function runJob(tx: WriteTx, queued: QueuedJob): Promise<Outcome> {
  if (queued.isSettled) return { ok: false, error: new DatabaseUnavailableError() };
  const writesBefore = tx.writeCount;
  try {
    return { ok: true, value: await queued.job(tx) };
  } catch (error) {
    // A job that failed before writing leaves the transaction usable for the rest.
    const isClean = error instanceof AppError && tx.writeCount === writesBefore;
    if (isClean) return { ok: false, error };
    throw error;
  }
}

function settle(queued: QueuedJob, outcome: Outcome): void {
  if (queued.isSettled) return;
  queued.isSettled = true;
  clearTimeout(queued.timer);
  if (outcome.ok) queued.resolve(outcome.value);
  else queued.reject(outcome.error);
}

/** Maps a database failure to the error the client receives. */
export function toAppError(error: unknown): unknown {
  if (error instanceof AppError) return error;
  const code = (error as { code?: string }).code;
  if (code === '23505') {
    const detail = (error as { detail?: string }).detail ?? 'a unique value is taken';
    return new ConflictError(`The change conflicts with a stored one: ${detail}`);
  }
  if (isUnavailable(error)) return new DatabaseUnavailableError({ cause: error });
  return error;
}

/** Returns whether an error means the database cannot be reached right now. */
export function isUnavailable(error: unknown): boolean {
  const code = String((error as { code?: string }).code ?? '');
  return (
    code.startsWith('08') ||
    code.startsWith('57P') ||
    code === '53300' ||
    [
      'ECONNREFUSED',
      'ECONNRESET',
      'ETIMEDOUT',
      'EPIPE',
      'CONNECT_TIMEOUT',
      'CONNECTION_CLOSED',
      'CONNECTION_ENDED',
      'CONNECTION_DESTROYED',
    ].includes(code)
  );
}
