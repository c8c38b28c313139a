import { randomUUID } from 'node:crypto';
import type { Middleware, Next } from 'koa';
import type { Logger } from '../log.ts';
import type { RequestObservation } from '../metrics.ts';
import type { HttpContext, HttpState } from './context.ts';

/** Incoming ids are kept only in this shape, so they are safe in logs and headers. */
const REQUEST_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * Gives each request an id, sent back in `x-request-id` and written on every
 * log line of the request. A well-formed incoming `x-request-id` is kept, so
 * one id follows a call through a proxy; anything else is replaced.
 */
export function assignRequestId(
  log: Logger,
  observe?: (request: RequestObservation) => void,
): Middleware<HttpState> {
  return async (ctx: HttpContext, next: Next) => {
    const startedAt = performance.now();
    const incoming = ctx.get('x-request-id');
    const requestId = REQUEST_ID_PATTERN.test(incoming) ? incoming : randomUUID();
    ctx.state.requestId = requestId;
    ctx.state.log = log.child({ request_id: requestId });
    ctx.set('x-request-id', requestId);
    // Every response depends on the caller's token and on changing state.
    ctx.set('Cache-Control', 'no-store');

    await next();

    const durationMs = Math.round((performance.now() - startedAt) * 10) / 10;
    ctx.state.log.debug(
      { method: ctx.method, path: ctx.path, status: ctx.status, duration_ms: durationMs },
      'request',
    );
    observe?.({ method: ctx.method, route: routeTemplate(ctx), status: ctx.status, durationMs });
  };
}

/** Returns the path pattern the router matched, such as `/routes/:id`, so ids never become metric labels. */
function routeTemplate(ctx: HttpContext): string {
  const matched = (ctx as { _matchedRoute?: unknown })._matchedRoute;
  return typeof matched === 'string' ? matched : 'unmatched';
}
