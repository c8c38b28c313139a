import type { RouteStatus, WorkerStatus } from '../../proto/index.ts';
import type { Queryable } from './database.ts';
import { ROUTE_STATUS } from './routes.ts';

// SQL behind the gauges that `GET /metrics` reads from the database on each scrape.

/** The sync state of one worker, as the lag and heartbeat gauges report it. */
export interface WorkerSyncRow {
  id: string;
  authority: string;
  status: WorkerStatus;
  lagRevisions: number;
  /** Commit time of the oldest change the worker has not acknowledged; null when in sync. */
  lagSince: Date | null;
  lastHeartbeatAt: Date | null;
}

/** Reads the sync state of every worker that is not deregistered. */
export async function workerSyncRows(q: Queryable): Promise<WorkerSyncRow[]> {
  // The lag rule is the one of the workers API: the oldest unacknowledged change of the table.
  const rows = await q`
    SELECT w.id, w.authority, w.status, w.last_heartbeat_at,
      GREATEST(w.target_revision - w.applied_revision, 0) AS lag_revisions,
      CASE WHEN w.applied_revision >= w.target_revision THEN NULL ELSE (
        SELECT min(c.at) FROM changes c
        WHERE c.revision > w.applied_revision AND c.revision <= w.target_revision
          AND (c.worker_id = w.id OR c.prev_worker_id = w.id)
      ) END AS lag_since
    FROM workers w
    WHERE w.status <> 'deregistered'`;
  return rows.map((row) => ({
    id: String(row.id),
    authority: String(row.authority),
    status: row.status as WorkerStatus,
    lagRevisions: Number(row.lag_revisions),
    lagSince: toDate(row.lag_since),
    lastHeartbeatAt: toDate(row.last_heartbeat_at),
  }));
}

/** Counts workers by status with one GROUP BY. */
export async function workerStatusCounts(q: Queryable): Promise<Map<WorkerStatus, number>> {
  const rows = await q`SELECT status, count(*) AS count FROM workers GROUP BY status`;
  return new Map(rows.map((row) => [row.status as WorkerStatus, Number(row.count)]));
}

/** Counts routes by status with one GROUP BY; status is derived as routes.ts derives it. */
export async function routeStatusCounts(q: Queryable): Promise<Map<RouteStatus, number>> {
  const rows = await q.unsafe(
    `SELECT ${ROUTE_STATUS} AS status, count(*) AS count
     FROM routes r JOIN workers w ON w.id = r.worker_id
     GROUP BY 1`,
  );
  return new Map(rows.map((row) => [row.status as RouteStatus, Number(row.count)]));
}

function toDate(value: unknown): Date | null {
  if (value === null || value === undefined) return null;
  return value instanceof Date ? value : new Date(String(value));
}
