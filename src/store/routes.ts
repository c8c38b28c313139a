import type { Backend, Route, RouteStatus } from '../../proto/index.ts';
import type { Queryable } from './database.ts';
import { wireText } from './writer.ts';

// SQL for the routes table. Status is derived here from the worker's state
// and acknowledged revision; it is never stored.

/**
 * Whether route `r` fits worker `w` as the worker last registered: its
 * protocol, and a port in the worker's range or a subdomain by the worker's
 * mode. A worker that registers again with a narrower range or another mode
 * may hold routes that do not fit.
 */
export const ROUTE_FITS_WORKER = `(
    r.protocol = ANY (w.protocols) AND CASE w.frontend_mode
      WHEN 'port' THEN r.port BETWEEN w.port_first AND w.port_last
      ELSE r.subdomain IS NOT NULL END)`;

/** The status of route `r` on worker `w`; routes.ts and metrics.ts share it. */
export const ROUTE_STATUS = `
    CASE
      WHEN w.status NOT IN ('alive', 'draining') THEN 'unavailable'
      WHEN NOT ${ROUTE_FITS_WORKER} THEN 'unavailable'
      WHEN w.applied_revision >= r.revision THEN 'active'
      ELSE 'pending'
    END`;

const SELECT_ROUTE = `
  SELECT r.*, ${ROUTE_STATUS} AS status
  FROM routes r JOIN workers w ON w.id = r.worker_id`;

/**
 * Options for the fixed statements sent with `unsafe`: prepared, as tagged
 * queries are, so PostgreSQL plans each once per connection. A pool that
 * prepares nothing, as on the embedded database, leaves them unprepared too.
 */
const PREPARED = { prepare: true } as const;

const ISO_TIME = `'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'`;

/**
 * A worker's routes as the JSON text that rowToRoute and JSON.stringify
 * produce, so a snapshot streams text without parsing rows. A route's JSON
 * comes from the `wire` column that each write fills, with the derived
 * status added. A route not written since that column exists gets its JSON
 * built here: the fields in the same order, times as in toISOString, and the
 * optional fields only when set. Keep this in step with rowToRoute; a
 * snapshot test compares them. Parameter: the worker id.
 */
const SELECT_WORKER_ROUTE_JSON = `
  SELECT COALESCE(
    left(r.wire, -1) || ',"status":"' || ${ROUTE_STATUS} || '"}',
    left(row_to_json(x)::text, -1)
      || CASE WHEN r.idle_timeout_s IS NULL THEN '' ELSE ',"idle_timeout_s":' || r.idle_timeout_s::text END
      || CASE WHEN r.worker_selector IS NULL THEN '' ELSE ',"worker_selector":' || r.worker_selector::text END
      || '}') AS json
  FROM routes r JOIN workers w ON w.id = r.worker_id,
  LATERAL (SELECT r.id, r.session_id, r.service, r.protocol, r.mode, r.backends, r.worker_id,
    r.port, r.subdomain, r.url, r.open_to_public, r.allowed_client_ips, r.labels,
    ${ROUTE_STATUS} AS status, r.revision,
    to_char(r.created_at AT TIME ZONE 'UTC', ${ISO_TIME}) AS created_at,
    to_char(r.updated_at AT TIME ZONE 'UTC', ${ISO_TIME}) AS updated_at) x
  WHERE r.worker_id = $1`;

type Row = Record<string, unknown>;

function toIso(value: unknown): string {
  return value instanceof Date ? value.toISOString() : new Date(String(value)).toISOString();
}

export function rowToRoute(row: Row): Route {
  const route: Route = {
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
  return withOptionalFields(route, row);
}

/** Adds the fields a route carries only when set, so unset ones stay out of its JSON. */
function withOptionalFields(route: Route, row: Row): Route {
  if (row.idle_timeout_s !== null && row.idle_timeout_s !== undefined) {
    route.idle_timeout_s = Number(row.idle_timeout_s);
  }
  if (row.worker_selector !== null && row.worker_selector !== undefined) {
    route.worker_selector = row.worker_selector as Record<string, string>;
  }
  return route;
}

function jsonOrNull(value: unknown): string | null {
  return value === undefined ? null : JSON.stringify(value);
}

export async function findRoute(q: Queryable, id: string): Promise<Route | null> {
  const rows = await q.unsafe(`${SELECT_ROUTE} WHERE r.id = $1`, [id], PREPARED);
  return rows.length > 0 ? rowToRoute(rows[0]) : null;
}

export async function findRouteBySessionService(
  q: Queryable,
  sessionId: string,
  service: string,
): Promise<Route | null> {
  const rows = await q.unsafe(
    `${SELECT_ROUTE} WHERE r.session_id = $1 AND r.service = $2`,
    [sessionId, service],
    PREPARED,
  );
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

export function insertRoute(q: Queryable, route: Route): Promise<unknown> {
  return q`
    INSERT INTO routes (id, session_id, service, protocol, mode, backends, worker_id, port,
      subdomain, url, open_to_public, allowed_client_ips, labels, revision, created_at, updated_at,
      idle_timeout_s, worker_selector, wire)
    VALUES (${route.id}, ${route.session_id}, ${route.service}, ${route.protocol}, ${route.mode},
      ${JSON.stringify(route.backends)}::text::jsonb, ${route.worker_id}, ${route.port},
      ${route.subdomain}, ${route.url}, ${route.open_to_public},
      ${JSON.stringify(route.allowed_client_ips)}::text::jsonb, ${JSON.stringify(route.labels)}::text::jsonb,
      ${route.revision}, ${route.created_at}, ${route.updated_at}, ${route.idle_timeout_s ?? null},
      ${jsonOrNull(route.worker_selector)}::text::jsonb, ${wireText(route)})`.execute();
}

/** Inserts many new routes in one statement. */
export async function insertRoutes(q: Queryable, routes: Route[]): Promise<void> {
  if (routes.length === 0) return;
  const rows = routes.map((route) => ({ ...route, wire: wireText(route) }));
  await q`
    INSERT INTO routes (id, session_id, service, protocol, mode, backends, worker_id, port,
      subdomain, url, open_to_public, allowed_client_ips, labels, revision, created_at, updated_at,
      idle_timeout_s, worker_selector, wire)
    SELECT id, session_id, service, protocol, mode, backends, worker_id, port,
      subdomain, url, open_to_public, allowed_client_ips, labels, revision, created_at, updated_at,
      idle_timeout_s, worker_selector, wire
    FROM jsonb_populate_recordset(NULL::routes, ${JSON.stringify(rows)}::text::jsonb)`;
}

/** Finds the routes of many (session, service) pairs in one read. */
export async function findRoutesBySessionServices(
  q: Queryable,
  keys: Array<{ sessionId: string; service: string }>,
): Promise<Route[]> {
  if (keys.length === 0) return [];
  const pairs = JSON.stringify(keys.map((key) => ({ s: key.sessionId, v: key.service })));
  const rows = await q.unsafe(
    `${SELECT_ROUTE} WHERE (r.session_id, r.service) IN (
       SELECT s, v FROM jsonb_to_recordset($1::text::jsonb) AS t (s text, v text))`,
    [pairs],
    PREPARED,
  );
  return rows.map(rowToRoute);
}

/** Stores every mutable field of `route`: its spec, its placement and its revision. */
export async function updateRoute(q: Queryable, route: Route): Promise<void> {
  await q`
    UPDATE routes SET
      backends = ${JSON.stringify(route.backends)}::text::jsonb,
      open_to_public = ${route.open_to_public},
      allowed_client_ips = ${JSON.stringify(route.allowed_client_ips)}::text::jsonb,
      labels = ${JSON.stringify(route.labels)}::text::jsonb,
      idle_timeout_s = ${route.idle_timeout_s ?? null},
      worker_selector = ${jsonOrNull(route.worker_selector)}::text::jsonb,
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
  const rows = await q.unsafe(`${SELECT_ROUTE} WHERE r.session_id = $1 ORDER BY r.service`, [sessionId], PREPARED);
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
    PREPARED,
  );
  return rows.map(rowToRoute);
}

/**
 * Yields a worker's routes as JSON text, `batchSize` at a time, from one
 * query read through a cursor: one scan however large the table, and the
 * next batch is fetched only when the consumer requests it. Run it in a transaction.
 */
export async function* workerRouteTexts(
  q: Queryable,
  workerId: string,
  batchSize: number,
): AsyncGenerator<string[]> {
  for await (const rows of q.unsafe(SELECT_WORKER_ROUTE_JSON, [workerId]).cursor(batchSize)) {
    yield rows.map((row) => String(row.json));
  }
}

/** Returns the route on a worker whose last change has `revision`, if there is one. */
export async function workerRouteAtRevision(
  q: Queryable,
  workerId: string,
  revision: number,
): Promise<Route | null> {
  const rows = await q.unsafe(
    `${SELECT_ROUTE} WHERE r.worker_id = $1 AND r.revision = $2`,
    [workerId, revision],
    PREPARED,
  );
  return rows.length > 0 ? rowToRoute(rows[0]) : null;
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

/** Returns, per alive worker with a route at `subdomain`, that route's id. */
export async function routeIdsAtSubdomain(q: Queryable, subdomain: string): Promise<Map<string, string>> {
  const rows = await q`
    SELECT worker_id, id FROM routes
    WHERE subdomain = ${subdomain}
      AND worker_id IN (SELECT id FROM workers WHERE status = 'alive')`;
  return new Map(rows.map((row) => [String(row.worker_id), String(row.id)]));
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
  const rows = await q.unsafe(
    `${SELECT_ROUTE} WHERE r.worker_id = $1 AND r.port = $2`,
    [workerId, port],
    PREPARED,
  );
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
    PREPARED,
  );
  return rows.map(rowToRoute);
}

/**
 * Returns routes on live or draining workers that do not fit them, in id
 * order after `afterId`. It reads every route of every such worker, so it
 * runs after registrations, not on every sweep.
 */
export async function misfitRoutes(
  q: Queryable,
  limit: number,
  afterId = '00000000-0000-0000-0000-000000000000',
): Promise<Route[]> {
  const rows = await q.unsafe(
    `${SELECT_ROUTE} WHERE w.status IN ('alive', 'draining') AND NOT ${ROUTE_FITS_WORKER}
       AND r.id > $1
     ORDER BY r.id LIMIT $2`,
    [afterId, limit],
    PREPARED,
  );
  return rows.map(rowToRoute);
}

/** The addresses in use on one worker, each with the id of the route holding it. */
export interface WorkerAddresses {
  ports: Map<number, string>;
  subdomains: Map<string, string>;
}

/** Reads the ports and subdomains in use on each of `workerIds`, in one query. */
export async function addressesInUse(
  q: Queryable,
  workerIds: string[],
): Promise<Map<string, WorkerAddresses>> {
  const result = new Map<string, WorkerAddresses>();
  for (const id of workerIds) result.set(id, { ports: new Map(), subdomains: new Map() });
  if (workerIds.length === 0) return result;
  const rows = await q`
    SELECT id, worker_id, port, subdomain FROM routes
    WHERE worker_id IN (
      SELECT jsonb_array_elements_text(${JSON.stringify(workerIds)}::text::jsonb)::uuid)`;
  for (const row of rows) {
    const addresses = result.get(String(row.worker_id)) as WorkerAddresses;
    if (row.port !== null) addresses.ports.set(Number(row.port), String(row.id));
    if (row.subdomain !== null) addresses.subdomains.set(String(row.subdomain), String(row.id));
  }
  return result;
}

/** A route's new placement, as a move writes it. */
export interface RouteMove {
  id: string;
  worker_id: string;
  port: number | null;
  subdomain: string | null;
  url: string;
  revision: number;
}

/**
 * Writes many moves in one statement. The caller checked every new address
 * against the addresses in use, under the write lock.
 */
export async function applyMoves(q: Queryable, moves: RouteMove[], at: Date): Promise<void> {
  if (moves.length === 0) return;
  await q`
    UPDATE routes r SET worker_id = m.worker_id, port = m.port, subdomain = m.subdomain,
      url = m.url, revision = m.revision, updated_at = ${at}
    FROM jsonb_to_recordset(${JSON.stringify(moves)}::text::jsonb)
      AS m (id uuid, worker_id uuid, port integer, subdomain text, url text, revision bigint)
    WHERE r.id = m.id`;
}

/** Client activity a worker reported for one of its routes. */
export interface RouteActivity {
  routeId: string;
  workerId: string;
  at: Date;
}

/**
 * Raises the last activity time of routes, only where the route is still on
 * the reporting worker. A time ahead of the database clock counts as now,
 * so a worker with a fast clock cannot keep a route from expiring.
 */
export async function recordRouteActivity(q: Queryable, items: RouteActivity[]): Promise<void> {
  if (items.length === 0) return;
  const rows = items.map((item) => ({ id: item.routeId, w: item.workerId, at: item.at }));
  const json = JSON.stringify(rows);
  await q`
    UPDATE routes r SET last_activity_at = GREATEST(r.last_activity_at, LEAST(a.at, now()))
    FROM jsonb_to_recordset(${json}::text::jsonb) AS a (id uuid, w uuid, at timestamptz)
    WHERE r.id = a.id AND r.worker_id = a.w`;
}

// Routes idle longer than their idle_timeout_s at $1: no activity and no change for that
// long. Only routes on a live or draining worker expire, because no client can reach the others.
const IDLE_ROUTES = `
  SELECT r.id FROM routes r JOIN workers w ON w.id = r.worker_id
  WHERE r.idle_timeout_s IS NOT NULL AND w.status IN ('alive', 'draining')
    AND GREATEST(r.updated_at, r.last_activity_at) + make_interval(secs => r.idle_timeout_s) < $1`;

/** Returns whether any route is idle past its timeout at `now`. */
export async function hasIdleRoutes(q: Queryable, now: Date): Promise<boolean> {
  const rows = await q.unsafe(`SELECT EXISTS (${IDLE_ROUTES}) AS found`, [now], PREPARED);
  return Boolean(rows[0].found);
}

/** Deletes up to `limit` routes idle past their timeout at `now`, in id order. */
export async function deleteIdleRoutes(q: Queryable, now: Date, limit: number): Promise<Route[]> {
  const rows = await q.unsafe(
    `DELETE FROM routes WHERE id IN (${IDLE_ROUTES} ORDER BY r.id LIMIT $2) RETURNING *`,
    [now, limit],
    PREPARED,
  );
  return rows.map(rowToRoute).sort((a, b) => a.id.localeCompare(b.id));
}

/** Needs of a stranded route from a worker: its protocol, its mode and its selector. */
export interface StrandedNeed {
  protocol: Route['protocol'];
  frontendMode: 'port' | 'wildcard';
  selector?: Record<string, string>;
}

/** Returns the distinct needs of routes on lost or deregistered workers. */
export async function strandedNeeds(q: Queryable): Promise<StrandedNeed[]> {
  const rows = await q`
    SELECT DISTINCT r.protocol, r.port IS NOT NULL AS is_port_mode, r.worker_selector
    FROM routes r JOIN workers w ON w.id = r.worker_id
    WHERE w.status IN ('lost', 'deregistered')`;
  return rows.map((row) => ({
    protocol: row.protocol as Route['protocol'],
    frontendMode: row.is_port_mode ? 'port' : 'wildcard',
    selector: (row.worker_selector as Record<string, string> | null) ?? undefined,
  }));
}
