import Router from '@koa/router';
import Koa from 'koa';
import type { HttpContext, HttpDeps, HttpState } from './context.ts';
import { answerProblems, rejectUnmatched } from './problems.ts';
import { assignRequestId } from './request-id.ts';
import { mountRouteHandlers } from './route-handlers.ts';
import { mountStatusHandlers } from './status-handlers.ts';
import { mountWorkerHandlers } from './worker-handlers.ts';

export type { HttpDeps } from './context.ts';

/**
 * Creates the Koa app of the REST API. Mount `app.callback()` on an HTTP
 * server; WebSocket upgrades (`/workers/stream`, `/events/stream`) are handled
 * outside it.
 */
export function createHttpApp(deps: HttpDeps): Koa<HttpState> {
  const app = new Koa<HttpState>();
  // answerProblems turns every error into a response; koa's own printing stays off.
  app.silent = true;
  app.on('error', (error: unknown, ctx?: HttpContext) => {
    const log = ctx?.state?.log ?? deps.log;
    log.error({ err: error }, 'HTTP response failed');
  });

  const router = new Router<HttpState>();
  mountStatusHandlers(router, deps);
  mountWorkerHandlers(router, deps);
  mountRouteHandlers(router, deps);

  app.use(assignRequestId(deps.log, deps.observeRequest));
  app.use(answerProblems);
  app.use(rejectUnmatched);
  app.use(router.routes());
  app.use(router.allowedMethods());
  return app;
}
