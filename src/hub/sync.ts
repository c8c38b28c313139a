import { TableDigest, tableDigest, type Route } from '../../proto/index.ts';
import { readMeta, workerChangesAfter } from '../store/changes.ts';
import type { Sql } from '../store/database.ts';
import { workerRoutes } from '../store/routes.ts';
import type { ChangeRecord } from '../store/writer.ts';

// How a worker's table gets from one revision to another: diffs built from
// change-log rows, and consistent reads for snapshots and resumes.

export interface TableDelta {
  upserts: Route[];
  removes: string[];
  /** Digest of the table after the delta. */
  digest: TableDigest;
}

/**
 * Folds ordered route changes after some base revision into one delta for a
 * worker's table. `digest` is the table's digest at the base revision; each
 * route's first change names where it was then, its last where it is now.
 */
export function foldChanges(
  workerId: string,
  changes: ChangeRecord[],
  digest: TableDigest,
): TableDelta {
  const delta: TableDelta = { upserts: [], removes: [], digest: digest.clone() };
  for (const { first, last } of firstAndLast(changes).values()) {
    const wasOnWorker = first.prev_worker_id === workerId;
    const isOnWorker = last.worker_id === workerId && last.type !== 'route.deleted';
    const id = String(last.route_id);
    if (wasOnWorker) delta.digest.toggle(id, Number(first.prev_revision));
    if (isOnWorker) {
      delta.digest.toggle(id, last.revision);
      delta.upserts.push(last.route as Route);
    } else if (wasOnWorker) {
      delta.removes.push(id);
    }
  }
  return delta;
}

function firstAndLast(changes: ChangeRecord[]) {
  const byRoute = new Map<string, { first: ChangeRecord; last: ChangeRecord }>();
  for (const change of changes) {
    if (change.route_id === null) continue;
    const entry = byRoute.get(change.route_id);
    if (entry) entry.last = change;
    else byRoute.set(change.route_id, { first: change, last: change });
  }
  return byRoute;
}

/** Returns whether a change alters the table of the given worker. */
export function touchesWorker(change: ChangeRecord, workerId: string): boolean {
  return (
    change.type.startsWith('route.') &&
    (change.worker_id === workerId || change.prev_worker_id === workerId)
  );
}

export interface TableSnapshot {
  revision: number;
  routes: Route[];
  digest: string;
}

/** Reads a worker's whole table at one revision. */
export async function readSnapshot(sql: Sql, workerId: string): Promise<TableSnapshot> {
  return sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (tx) => {
    const meta = await readMeta(tx);
    const routes: Route[] = [];
    for (;;) {
      const page = await workerRoutes(tx, workerId, 5000, routes.at(-1)?.id);
      routes.push(...page);
      if (page.length < 5000) break;
    }
    return { revision: meta.revision, routes, digest: tableDigest(routes) };
  }) as Promise<TableSnapshot>;
}

export type ResumePlan =
  | { kind: 'diff'; fromRevision: number; revision: number; delta: TableDelta }
  | { kind: 'snapshot'; reason: string };

/**
 * Decides how a worker that has the table of `fromRevision` with `digest`
 * catches up: a diff when the change log still covers that revision and the
 * digest matches the table the coordinator expects there, else a snapshot.
 */
export async function planResume(
  sql: Sql,
  workerId: string,
  fromRevision: number,
  digest: string,
): Promise<ResumePlan> {
  return sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (tx) => {
    const meta = await readMeta(tx);
    if (fromRevision > meta.revision) return snapshotPlan('revision is ahead of the database');
    if (fromRevision < meta.compactedThrough) return snapshotPlan('change log compacted');
    const current = await tx`SELECT id, revision FROM routes WHERE worker_id = ${workerId}`;
    const changes = await workerChangesAfter(tx, workerId, fromRevision);
    const expected = digestAt(workerId, current, changes);
    if (expected.toHex() !== digest) return snapshotPlan('digest differs from the stored table');
    const delta = foldChanges(workerId, changes, expected);
    return { kind: 'diff', fromRevision, revision: meta.revision, delta };
  }) as Promise<ResumePlan>;
}

function snapshotPlan(reason: string): ResumePlan {
  return { kind: 'snapshot', reason };
}

/** Rebuilds the digest a worker's table had before `changes`, from today's table. */
function digestAt(
  workerId: string,
  current: readonly Record<string, unknown>[],
  changes: ChangeRecord[],
): TableDigest {
  const revisions = new Map(current.map((row) => [String(row.id), Number(row.revision)]));
  const digest = new TableDigest(tableDigest([...revisions].map(([id, revision]) => ({ id, revision }))));
  for (const { first } of firstAndLast(changes).values()) {
    const id = String(first.route_id);
    const now = revisions.get(id);
    if (now !== undefined) digest.toggle(id, now);
    if (first.prev_worker_id === workerId) digest.toggle(id, Number(first.prev_revision));
  }
  return digest;
}
