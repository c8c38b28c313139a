import type Router from '@koa/router';
import * as v from 'valibot';
import {
  CreateRouteBodySchema,
  ListRoutesQuerySchema,
  LookupQuerySchema,
  PatchRouteBodySchema,
  SessionRoutesBodySchema,
  type Route,
} from '../../proto/index.ts';
import { NotFoundError, ValidationError } from '../errors.ts';
import { requireToken } from './auth.ts';
import { readJsonBody } from './body.ts';
import type { HttpContext, HttpDeps, HttpState } from './context.ts';
import {
  NO_QUERY,
  decodeCursor,
  encodeCursor,
  parseBody,
  parseIfMatch,
  parseQuery,
  parseSessionParam,
  parseUuidParam,
  routeEtag,
} from './input.ts';

const DEFAULT_PAGE_SIZE = 100;
const DEFAULT_WAIT_TIMEOUT_MS = 10_000;
/** Maximum wait for workers to acknowledge a write, so a request stays open for bounded time. */
const MAX_WAIT_TIMEOUT_MS = 30_000;

/** `?wait=applied&timeout_ms=N` of route writes. */
export const WriteQuerySchema = v.pipe(
  v.strictObject({
    wait: v.optional(v.picklist(['applied'], 'the only wait is "applied"')),
    timeout_ms: v.optional(
      v.pipe(
        v.string(),
        v.regex(/^\d{1,5}$/, `must be an integer from 1 to ${MAX_WAIT_TIMEOUT_MS}`),
        v.transform(Number),
        v.minValue(1),
        v.maxValue(MAX_WAIT_TIMEOUT_MS),
      ),
    ),
  }),
  v.forward(
    v.check(
      (query) => query.timeout_ms === undefined || query.wait === 'applied',
      'timeout_ms needs wait=applied',
    ),
    ['timeout_ms'],
  ),
);

type Routes = HttpDeps['routes'];
type Ctx = HttpContext & { params: Record<string, string> };

/** Adds `/routes`, `/sessions/:session_id/routes` and `/lookup`. */
export function mountRouteHandlers(router: Router<HttpState>, deps: HttpDeps): void {
  const { routes, auth } = deps;
  const readers = requireToken(auth, ['manager', 'read']);
  const manager = requireToken(auth, ['manager']);

  router.post('/routes', manager, readJsonBody, (ctx) => createRoute(ctx, deps));
  router.get('/routes', readers, (ctx) => listRoutes(ctx, routes));
  router.get('/routes/:id', readers, (ctx) => getRoute(ctx, routes));
  router.patch('/routes/:id', manager, readJsonBody, (ctx) => patchRoute(ctx, deps));
  router.delete('/routes/:id', manager, (ctx) => deleteRoute(ctx, deps));
  router.get('/sessions/:session_id/routes', readers, (ctx) => listSessionRoutes(ctx, routes));
  router.put('/sessions/:session_id/routes', manager, readJsonBody, (ctx) =>
    replaceSessionRoutes(ctx, routes),
  );
  router.delete('/sessions/:session_id/routes', manager, (ctx) => deleteSessionRoutes(ctx, routes));

  const lookupTokens = requireToken(auth, ['manager', 'read', 'session']);
  router.get('/lookup', lookupTokens, (ctx) => lookupRoute(ctx, routes));
}

async function createRoute(ctx: Ctx, deps: HttpDeps): Promise<void> {
  const query = parseQuery(ctx, WriteQuerySchema);
  const body = parseBody(ctx, CreateRouteBodySchema);
  const { route, isCreated } = await deps.routes.create(body);
  const waited = await waitIfRequested(deps, route, query);
  const status = isCreated ? 201 : 200;
  answerRoute(ctx, waited.route, waited.isApplied ? status : 202);
}

async function patchRoute(ctx: Ctx, deps: HttpDeps): Promise<void> {
  const id = parseUuidParam(ctx.params.id, 'route');
  const query = parseQuery(ctx, WriteQuerySchema);
  const body = parseBody(ctx, PatchRouteBodySchema);
  const route = await deps.routes.patch(id, body, parseIfMatch(ctx));
  const waited = await waitIfRequested(deps, route, query);
  answerRoute(ctx, waited.route, waited.isApplied ? 200 : 202);
}

/**
 * Waits, when the query has `wait=applied`, until every connected instance of
 * the route's worker has acknowledged the write, then reads the route again so
 * it shows `active`. `isApplied` is false only when `timeout_ms` ran out.
 * Without a wait to do, because none was requested or `waitForApplied` is not
 * given, the route is returned as written with `isApplied` true.
 */
async function waitIfRequested(
  deps: HttpDeps,
  route: Route,
  query: v.InferOutput<typeof WriteQuerySchema>,
): Promise<{ route: Route; isApplied: boolean }> {
  const wait = deps.waitForApplied;
  if (query.wait !== 'applied' || !wait || route.status === 'active') {
    return { route, isApplied: true };
  }
  const timeoutMs = query.timeout_ms ?? DEFAULT_WAIT_TIMEOUT_MS;
  if (!(await wait(route.id, route.revision, timeoutMs))) return { route, isApplied: false };
  // A route deleted while waiting gets the response of the write itself.
  return { route: (await deps.routes.get(route.id)) ?? route, isApplied: true };
}

function answerRoute(ctx: Ctx, route: Route, status: number): void {
  ctx.status = status;
  ctx.set('ETag', routeEtag(route.revision));
  ctx.body = route;
}

async function listRoutes(ctx: Ctx, routes: Routes): Promise<void> {
  const query = parseQuery(ctx, ListRoutesQuerySchema);
  const limit = query.limit ?? DEFAULT_PAGE_SIZE;
  const afterId = query.cursor === undefined ? undefined : decodeCursor(query.cursor);
  const filter = {
    session_id: query.session_id,
    worker_id: query.worker_id,
    service: query.service,
  };

  // One extra row shows whether another page follows.
  const page = await routes.list(filter, limit + 1, afterId);
  const hasMore = page.length > limit;
  const items = page.slice(0, limit);
  const nextCursor = hasMore ? encodeCursor(items[items.length - 1].id) : null;
  ctx.body = { routes: items, next_cursor: nextCursor };
}

async function getRoute(ctx: Ctx, routes: Routes): Promise<void> {
  const id = parseUuidParam(ctx.params.id, 'route');
  parseQuery(ctx, NO_QUERY);
  const route = await routes.get(id);
  if (!route) throw new NotFoundError(`Route ${id} not found.`);
  answerRoute(ctx, route, 200);
}

/**
 * Deletes a route. With `wait=applied` it returns 204 once every connected
 * instance of the route's worker has acknowledged the deletion, and 202 with
 * the deletion's revision when `timeout_ms` runs out first.
 */
async function deleteRoute(ctx: Ctx, deps: HttpDeps): Promise<void> {
  const id = parseUuidParam(ctx.params.id, 'route');
  const query = parseQuery(ctx, WriteQuerySchema);
  const deleted = await deps.routes.remove(id, parseIfMatch(ctx));
  const wait = deps.waitForWorkerApplied;
  ctx.status = 204;
  if (query.wait !== 'applied' || !wait || !deleted) return;
  const timeoutMs = query.timeout_ms ?? DEFAULT_WAIT_TIMEOUT_MS;
  if (await wait(deleted.workerId, deleted.revision, timeoutMs)) return;
  ctx.status = 202;
  ctx.body = { id, worker_id: deleted.workerId, revision: deleted.revision, status: 'pending' };
}

async function listSessionRoutes(ctx: Ctx, routes: Routes): Promise<void> {
  const sessionId = parseSessionParam(ctx.params.session_id);
  parseQuery(ctx, NO_QUERY);
  ctx.body = { routes: await routes.sessionRoutes(sessionId) };
}

/**
 * Makes the session's routes exactly the listed ones in one transaction, so
 * each worker receives the whole change as one diff.
 */
async function replaceSessionRoutes(ctx: Ctx, routes: Routes): Promise<void> {
  const sessionId = parseSessionParam(ctx.params.session_id);
  parseQuery(ctx, NO_QUERY);
  const body = parseBody(ctx, SessionRoutesBodySchema);
  const result = await routes.replaceSession(sessionId, body.routes);
  ctx.state.log.info(
    {
      session_id: sessionId,
      created: result.created,
      updated: result.updated,
      deleted: result.deleted,
    },
    'session routes replaced',
  );
  ctx.body = result;
}

async function deleteSessionRoutes(ctx: Ctx, routes: Routes): Promise<void> {
  const sessionId = parseSessionParam(ctx.params.session_id);
  parseQuery(ctx, NO_QUERY);
  ctx.body = { deleted: await routes.removeSession(sessionId) };
}

/**
 * Finds the route at a wildcard host, or at a worker's port. A worker's
 * session token finds only routes of its own worker; others read as 404.
 */
async function lookupRoute(ctx: Ctx, routes: Routes): Promise<void> {
  const query = parseQuery(ctx, LookupQuerySchema);
  const principal = ctx.state.principal;
  const ownWorkerId = principal?.kind === 'session' ? principal.workerId : undefined;
  const route = await findAtAddress(routes, query, ownWorkerId);
  if (!route) throw new NotFoundError(`No route is served at ${describeAddress(query)}.`);
  answerRoute(ctx, route, 200);
}

type LookupQuery = v.InferOutput<typeof LookupQuerySchema>;

async function findAtAddress(
  routes: Routes,
  query: LookupQuery,
  ownWorkerId: string | undefined,
): Promise<Route | null> {
  if (query.host !== undefined) {
    if (query.worker_id !== undefined || query.port !== undefined) {
      throw new ValidationError('The query string is invalid at host; give one address.', [
        { path: 'host', message: 'give host, or worker_id and port, not both' },
      ]);
    }
    return routes.findByHost(query.host, ownWorkerId);
  }
  const workerId = (query.worker_id as string).toLowerCase();
  if (ownWorkerId !== undefined && workerId !== ownWorkerId.toLowerCase()) return null;
  return routes.findByPort(workerId, query.port as number);
}

function describeAddress(query: LookupQuery): string {
  if (query.host !== undefined) return `host ${query.host}`;
  return `port ${query.port} of worker ${query.worker_id}`;
}
