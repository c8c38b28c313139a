import { EMPTY_DIGEST, type RouteEvent } from '../../proto/index.ts';
import type { Queryable } from './database.ts';
import type { ChangeRecord } from './writer.ts';

// SQL for the change log and the revision counter.

type Row = Record<string, unknown>;

function rowToChange(row: Row): ChangeRecord {
  return {
    revision: Number(row.revision),
    type: row.type as ChangeRecord['type'],
    at: row.at instanceof Date ? row.at.toISOString() : String(row.at),
    route_id: (row.route_id as string | null) ?? null,
    session_id: (row.session_id as string | null) ?? null,
    worker_id: (row.worker_id as string | null) ?? null,
    prev_worker_id: (row.prev_worker_id as string | null) ?? null,
    prev_revision: row.prev_revision === null ? null : Number(row.prev_revision),
    route: (row.route as ChangeRecord['route']) ?? null,
    worker: (row.worker as ChangeRecord['worker']) ?? null,
    previous: (row.previous as ChangeRecord['previous']) ?? null,
    reason: (row.reason as string | null) ?? null,
  };
}

/** Turns a change-log row into the event that `GET /events` and the stream send. */
export function toEvent(change: ChangeRecord): RouteEvent {
  const event: RouteEvent = { revision: change.revision, type: change.type, at: change.at };
  if (change.route) event.route = change.route;
  if (change.worker) event.worker = change.worker;
  if (change.previous) event.previous = change.previous;
  if (change.reason) event.reason = change.reason;
  return event;
}

export interface Meta {
  epoch: string;
  revision: number;
  /** Every change at or below this revision is gone from the log. */
  compactedThrough: number;
}

export async function readMeta(q: Queryable): Promise<Meta> {
  const [row] = await q`SELECT epoch, revision, compacted_through FROM meta`;
  return {
    epoch: String(row.epoch),
    revision: Number(row.revision),
    compactedThrough: Number(row.compacted_through),
  };
}

export interface ChangeFilter {
  session_id?: string;
  worker_id?: string;
}

/** Returns changes after `since` in revision order, at most `limit`. */
export async function changesAfter(
  q: Queryable,
  since: number,
  limit: number,
  filter: ChangeFilter = {},
): Promise<ChangeRecord[]> {
  const values: unknown[] = [since];
  const conditions = ['revision > $1'];
  if (filter.session_id !== undefined) {
    values.push(filter.session_id);
    conditions.push(`session_id = $${values.length}`);
  }
  if (filter.worker_id !== undefined) {
    values.push(filter.worker_id);
    conditions.push(`(worker_id = $${values.length} OR prev_worker_id = $${values.length})`);
  }
  values.push(limit);
  const text = `SELECT * FROM changes WHERE ${conditions.join(' AND ')}
                ORDER BY revision LIMIT $${values.length}`;
  // Four texts at most, one per filter combination, so each is prepared once per connection.
  return (await q.unsafe(text, values as never[], { prepare: true })).map(rowToChange);
}

/**
 * Returns the route changes after `since` that touched a worker's table, in
 * revision order, at most `limit`.
 */
export async function workerChangesAfter(
  q: Queryable,
  workerId: string,
  since: number,
  limit: number | null = null,
): Promise<ChangeRecord[]> {
  const rows = await q`
    SELECT * FROM changes
    WHERE revision > ${since} AND type LIKE 'route.%'
      AND (worker_id = ${workerId} OR prev_worker_id = ${workerId})
    ORDER BY revision
    LIMIT ${limit}`;
  return rows.map(rowToChange);
}

/**
 * Returns the stored digest of a worker's table, or the empty digest for an
 * unknown worker. Every write transaction keeps it equal to the digest of the
 * worker's routes.
 */
export async function readTableDigest(q: Queryable, workerId: string): Promise<string> {
  const rows = await q`
    SELECT lpad(to_hex(digest_high), 16, '0') || lpad(to_hex(digest_low), 16, '0') AS digest
    FROM workers WHERE id = ${workerId}`;
  return rows.length > 0 ? String(rows[0].digest) : EMPTY_DIGEST;
}

/**
 * Deletes changes older than `maxAgeMs` and beyond the newest `maxCount`, and
 * raises the compaction mark so resumes from before it get a snapshot. One
 * statement does both, so no reader sees rows gone below an old mark.
 *
 * @returns the number of rows deleted.
 */
export async function compactChanges(
  q: Queryable,
  limits: { maxAgeMs: number; maxCount: number },
): Promise<number> {
  const cutoff = new Date(Date.now() - limits.maxAgeMs);
  const [bound] = await q`
    SELECT GREATEST(
      COALESCE((SELECT max(revision) FROM changes WHERE at < ${cutoff}), 0),
      (SELECT revision FROM meta) - ${limits.maxCount}
    ) AS through,
    (SELECT compacted_through FROM meta) AS compacted_through`;
  const through = Number(bound.through);
  if (through <= Number(bound.compacted_through)) return 0;
  const deleted = await q`
    WITH mark AS (
      UPDATE meta SET compacted_through = GREATEST(compacted_through, ${through})
    )
    DELETE FROM changes WHERE revision <= ${through}`;
  return deleted.count;
}
