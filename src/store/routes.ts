import type { Backend, Route, RouteStatus } from '../../proto/index.ts';
import type { Queryable } from './database.ts';

// SQL for the routes table. Status is derived here from the worker's state
// and acknowledged revision; it is never stored.

const SELECT_ROUTE = `
  SELECT r.*,
    CASE
      WHEN w.status NOT IN ('alive', 'draining') THEN 'unavailable'
      WHEN w.applied_revision >= r.revision THEN 'active'
      ELSE 'pending'
    END AS status
  FROM routes r JOIN workers w ON w.id = r.worker_id`;

type Row = Record<string, unknown>;

function toIso(value: unknown): string {
  return value instanceof Date ? value.toISOString() : new Date(String(value)).toISOString();
}

export function rowToRoute(row: Row): Route {
  return {
    id: String(row.id),
    session_id: String(row.session_id),
    service: String(row.service),
    protocol: row.protocol as Route['protocol'],
    mode: row.mode as Route['mode'],
    backends: row.backends as Backend[],
    worker_id: String(row.worker_id),
    port: row.port === null ? null : Number(row.port),
    subdomain: (row.subdomain as string | null) ?? null,
    url: String(row.url),
    open_to_public: Boolean(row.open_to_public),
    allowed_client_ips: row.allowed_client_ips as string[],
    labels: row.labels as Record<string, string>,
    status: (row.status as RouteStatus | undefined) ?? 'pending',
    revision: Number(row.revision),
    created_at: toIso(row.created_at),
    updated_at: toIso(row.updated_at),
  };
}

export async function findRoute(q: Queryable, id: string): Promise<Route | null> {
  const rows = await q.unsafe(`${SELECT_ROUTE} WHERE r.id = $1`, [id]);
  return rows.length > 0 ? rowToRoute(rows[0]) : null;
}

export async function findRouteBySessionService(
  q: Queryable,
  sessionId: string,
  service: string,
): Promise<Route | null> {
  const rows = await q.unsafe(`${SELECT_ROUTE} WHERE r.session_id = $1 AND r.service = $2`, [
    sessionId,
    service,
  ]);
  return rows.length > 0 ? rowToRoute(rows[0]) : null;
}

export interface RouteFilter {
  session_id?: string;
  worker_id?: string;
  service?: string;
}

/** Lists routes ordered by id, after the id `afterId` when given. */
export async function listRoutes(
  q: Queryable,
  filter: RouteFilter,
  limit: number,
  afterId?: string,
): Promise<Route[]> {
  const conditions: string[] = [];
  const values: unknown[] = [];
  for (const column of ['session_id', 'worker_id', 'service'] as const) {
    const value = filter[column];
    if (value === undefined) continue;
    values.push(value);
    conditions.push(`r.${column} = $${values.length}`);
  }
  if (afterId !== undefined) {
    values.push(afterId);
    conditions.push(`r.id > $${values.length}`);
  }
  values.push(limit);
  const where = conditions.length > 0 ? `WHERE ${conditions.join(' AND ')}` : '';
  const text = `${SELECT_ROUTE} ${where} ORDER BY r.id LIMIT $${values.length}`;
  return (await q.unsafe(text, values as never[])).map(rowToRoute);
}

export async function insertRoute(q: Queryable, route: Route): Promise<void> {
  await q`
    INSERT INTO routes (id, session_id, service, protocol, mode, backends, worker_id, port,
      subdomain, url, open_to_public, allowed_client_ips, labels, revision, created_at, updated_at)
    VALUES (${route.id}, ${route.session_id}, ${route.service}, ${route.protocol}, ${route.mode},
      ${JSON.stringify(route.backends)}::text::jsonb, ${route.worker_id}, ${route.port},
      ${route.subdomain}, ${route.url}, ${route.open_to_public},
      ${JSON.stringify(route.allowed_client_ips)}::text::jsonb, ${JSON.stringify(route.labels)}::text::jsonb,
      ${route.revision}, ${route.created_at}, ${route.updated_at})`;
}

/** Stores every mutable field of `route`: its spec, its placement and its revision. */
export async function updateRoute(q: Queryable, route: Route): Promise<void> {
  await q`
    UPDATE routes SET
      backends = ${JSON.stringify(route.backends)}::text::jsonb,
      open_to_public = ${route.open_to_public},
      allowed_client_ips = ${JSON.stringify(route.allowed_client_ips)}::text::jsonb,
      labels = ${JSON.stringify(route.labels)}::text::jsonb,
      worker_id = ${route.worker_id},
      port = ${route.port},
      subdomain = ${route.subdomain},
      url = ${route.url},
      revision = ${route.revision},
      updated_at = ${route.updated_at}
    WHERE id = ${route.id}`;
}

export async function deleteRoute(q: Queryable, id: string): Promise<Route | null> {
  const rows = await q`DELETE FROM routes WHERE id = ${id} RETURNING *`;
  return rows.length > 0 ? rowToRoute(rows[0]) : null;
}

/** Deletes every route of a session whatever its status; matches the whole id only. */
export async function deleteSessionRoutes(q: Queryable, sessionId: string): Promise<Route[]> {
  const rows = await q`DELETE FROM routes WHERE session_id = ${sessionId} RETURNING *`;
  return rows.map(rowToRoute).sort((a, b) => a.id.localeCompare(b.id));
}

export async function sessionRoutes(q: Queryable, sessionId: string): Promise<Route[]> {
  const rows = await q.unsafe(`${SELECT_ROUTE} WHERE r.session_id = $1 ORDER BY r.service`, [
    sessionId,
  ]);
  return rows.map(rowToRoute);
}

/** Returns a worker's routes ordered by id, at most `limit`, after `afterId` when given. */
export async function workerRoutes(
  q: Queryable,
  workerId: string,
  limit: number,
  afterId = '00000000-0000-0000-0000-000000000000',
): Promise<Route[]> {
  const rows = await q.unsafe(
    `${SELECT_ROUTE} WHERE r.worker_id = $1 AND r.id > $2 ORDER BY r.id LIMIT $3`,
    [workerId, afterId, limit],
  );
  return rows.map(rowToRoute);
}

/** Returns id and revision of every route of a worker: what its digest is made of. */
export async function workerRouteVersions(
  q: Queryable,
  workerId: string,
): Promise<Array<{ id: string; revision: number }>> {
  const rows = await q`SELECT id, revision FROM routes WHERE worker_id = ${workerId}`;
  return rows.map((row) => ({ id: String(row.id), revision: Number(row.revision) }));
}

/** Returns the id of the route on a worker's port, if any. */
export async function routeIdAtPort(
  q: Queryable,
  workerId: string,
  port: number,
): Promise<string | null> {
  const rows = await q`SELECT id FROM routes WHERE worker_id = ${workerId} AND port = ${port}`;
  return rows.length > 0 ? String(rows[0].id) : null;
}

export async function routeIdAtSubdomain(
  q: Queryable,
  workerId: string,
  subdomain: string,
): Promise<string | null> {
  const rows = await q`
    SELECT id FROM routes WHERE worker_id = ${workerId} AND subdomain = ${subdomain}`;
  return rows.length > 0 ? String(rows[0].id) : null;
}

/** Returns the lowest port in [first, last] that no route of the worker uses, or null. */
export async function lowestFreePort(
  q: Queryable,
  workerId: string,
  first: number,
  last: number,
): Promise<number | null> {
  const rows = await q`
    SELECT candidate AS port FROM (
      SELECT ${first}::int AS candidate
      UNION ALL
      SELECT r.port + 1 FROM routes r
      WHERE r.worker_id = ${workerId} AND r.port >= ${first} AND r.port < ${last}
    ) c
    WHERE NOT EXISTS (
      SELECT 1 FROM routes u WHERE u.worker_id = ${workerId} AND u.port = c.candidate
    )
    ORDER BY candidate LIMIT 1`;
  return rows.length > 0 ? Number(rows[0].port) : null;
}

/** Finds the route served at `<subdomain><wildcard domain>`. */
export async function findRouteByHost(
  q: Queryable,
  subdomain: string,
  wildcardDomain: string,
  workerId?: string,
): Promise<Route | null> {
  const values: unknown[] = [subdomain, wildcardDomain];
  let text = `${SELECT_ROUTE} WHERE r.subdomain = $1 AND w.wildcard_domain = $2`;
  if (workerId !== undefined) {
    values.push(workerId);
    text += ` AND r.worker_id = $3`;
  }
  const rows = await q.unsafe(text, values as never[]);
  return rows.length > 0 ? rowToRoute(rows[0]) : null;
}

export async function findRouteByPort(
  q: Queryable,
  workerId: string,
  port: number,
): Promise<Route | null> {
  const rows = await q.unsafe(`${SELECT_ROUTE} WHERE r.worker_id = $1 AND r.port = $2`, [
    workerId,
    port,
  ]);
  return rows.length > 0 ? rowToRoute(rows[0]) : null;
}

/**
 * Returns routes on workers that are lost or deregistered, the ones waiting
 * to fail over, in id order after `afterId`.
 */
export async function strandedRoutes(
  q: Queryable,
  limit: number,
  afterId = '00000000-0000-0000-0000-000000000000',
): Promise<Route[]> {
  const rows = await q.unsafe(
    `${SELECT_ROUTE} WHERE w.status IN ('lost', 'deregistered') AND r.id > $1
     ORDER BY r.id LIMIT $2`,
    [afterId, limit],
  );
  return rows.map(rowToRoute);
}
