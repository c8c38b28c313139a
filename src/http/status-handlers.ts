import type Router from '@koa/router';
import { ListEventsQuerySchema } from '../../proto/index.ts';
import { NotFoundError } from '../errors.ts';
import { requireToken } from './auth.ts';
import type { HttpContext, HttpDeps, HttpState } from './context.ts';
import { NO_QUERY, parseQuery } from './input.ts';
import { OPENAPI_DOCUMENT } from './openapi.ts';

const DEFAULT_EVENT_LIMIT = 100;

/** Adds `/health`, `/events`, `/metrics` and `/openapi.json`. */
export function mountStatusHandlers(router: Router<HttpState>, deps: HttpDeps): void {
  const readers = requireToken(deps.auth, ['manager', 'read']);

  router.get('/health', (ctx) => readHealth(ctx, deps));
  router.get('/events', readers, (ctx) => listEvents(ctx, deps));
  router.get('/metrics', readers, (ctx) => readMetrics(ctx, deps));
  router.get('/openapi.json', (ctx) => {
    parseQuery(ctx, NO_QUERY);
    ctx.body = OPENAPI_DOCUMENT;
  });
}

async function readHealth(ctx: HttpContext, deps: HttpDeps): Promise<void> {
  parseQuery(ctx, NO_QUERY);
  const health = await deps.health();
  ctx.status = health.db === 'up' ? 200 : 503;
  ctx.body = health;
}

async function listEvents(ctx: HttpContext, deps: HttpDeps): Promise<void> {
  const query = parseQuery(ctx, ListEventsQuerySchema);
  ctx.body = await deps.events.list(query.since ?? 0, query.limit ?? DEFAULT_EVENT_LIMIT);
}

async function readMetrics(ctx: HttpContext, deps: HttpDeps): Promise<void> {
  parseQuery(ctx, NO_QUERY);
  if (!deps.metrics) throw new NotFoundError('This coordinator does not export metrics.');
  const { contentType, body } = await deps.metrics();
  ctx.body = body;
  ctx.type = contentType;
}
