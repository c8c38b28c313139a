import type { Queryable } from './database.ts';

// SQL for the coordinators table: which processes are running.

/** Records that a coordinator is running now. */
export async function touchCoordinator(q: Queryable, id: string, at: Date): Promise<void> {
  await q`
    INSERT INTO coordinators (id, started_at, last_seen_at) VALUES (${id}, ${at}, ${at})
    ON CONFLICT (id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at`;
}

export async function removeCoordinator(q: Queryable, id: string): Promise<void> {
  await q`DELETE FROM coordinators WHERE id = ${id}`;
}

/** An instance whose session a coordinator that stopped running still claims. */
export interface OrphanedSession {
  workerId: string;
  instanceId: string;
  generation: number;
}

/**
 * Returns instances held by coordinators not seen since `cutoff`, or by
 * coordinators that are gone from the table.
 */
export async function orphanedSessions(q: Queryable, cutoff: Date): Promise<OrphanedSession[]> {
  const rows = await q`
    SELECT i.worker_id, i.instance_id, i.generation
    FROM worker_instances i
    LEFT JOIN coordinators c ON c.id = i.coordinator_id
    WHERE i.coordinator_id IS NOT NULL AND (c.id IS NULL OR c.last_seen_at < ${cutoff})`;
  return rows.map((row) => ({
    workerId: String(row.worker_id),
    instanceId: String(row.instance_id),
    generation: Number(row.generation),
  }));
}

/** Deletes coordinators not seen since `cutoff`. */
export async function forgetCoordinators(q: Queryable, cutoff: Date): Promise<void> {
  await q`DELETE FROM coordinators WHERE last_seen_at < ${cutoff}`;
}
