import type Router from '@koa/router';
import { DrainWorkerBodySchema, RegisterWorkerBodySchema } from '../../proto/index.ts';
import { NotFoundError } from '../errors.ts';
import { requireToken } from './auth.ts';
import { readJsonBody } from './body.ts';
import type { HttpContext, HttpDeps, HttpState } from './context.ts';
import { NO_QUERY, parseBody, parseQuery, parseUuidParam } from './input.ts';

type Workers = HttpDeps['workers'];
type Ctx = HttpContext & { params: Record<string, string> };

/**
 * Adds `/workers/register`, `/workers` and `/workers/:id/drain`. The WebSocket
 * hub serves `/workers/stream`.
 */
export function mountWorkerHandlers(router: Router<HttpState>, deps: HttpDeps): void {
  const { workers, auth } = deps;
  const readers = requireToken(auth, ['manager', 'read']);
  const manager = requireToken(auth, ['manager']);
  const worker = requireToken(auth, ['worker']);

  router.post('/workers/register', worker, readJsonBody, (ctx) => registerWorker(ctx, workers));
  router.get('/workers', readers, (ctx) => listWorkers(ctx, workers));
  router.get('/workers/:id', readers, (ctx) => getWorker(ctx, workers));
  router.delete('/workers/:id', manager, (ctx) => deregisterWorker(ctx, workers));
  router.post('/workers/:id/drain', manager, readJsonBody, (ctx) => drainWorker(ctx, workers));
}

async function registerWorker(ctx: Ctx, workers: Workers): Promise<void> {
  parseQuery(ctx, NO_QUERY);
  const body = parseBody(ctx, RegisterWorkerBodySchema);
  const { response, isNew } = await workers.register(body);
  ctx.state.log.info(
    { worker_id: response.worker.id, authority: body.authority, generation: response.generation },
    isNew ? 'worker registered' : 'worker registered again',
  );
  ctx.status = isNew ? 201 : 200;
  ctx.body = response;
}

async function listWorkers(ctx: Ctx, workers: Workers): Promise<void> {
  parseQuery(ctx, NO_QUERY);
  ctx.body = { workers: await workers.list() };
}

async function getWorker(ctx: Ctx, workers: Workers): Promise<void> {
  const id = parseUuidParam(ctx.params.id, 'worker');
  parseQuery(ctx, NO_QUERY);
  const worker = await workers.get(id);
  if (!worker) throw new NotFoundError(`Worker ${id} not found.`);
  ctx.body = worker;
}

async function deregisterWorker(ctx: Ctx, workers: Workers): Promise<void> {
  const id = parseUuidParam(ctx.params.id, 'worker');
  parseQuery(ctx, NO_QUERY);
  await workers.deregister(id);
  ctx.state.log.info({ worker_id: id }, 'worker deregistered');
  ctx.status = 204;
}

/**
 * Sets a worker draining: it takes no new routes. With `{"move": true}` its
 * routes move to other live workers before the response.
 */
async function drainWorker(ctx: Ctx, workers: Workers): Promise<void> {
  const id = parseUuidParam(ctx.params.id, 'worker');
  parseQuery(ctx, NO_QUERY);
  const body = parseBody(ctx, DrainWorkerBodySchema);
  const result = await workers.drain(id, { move: body.move });
  ctx.state.log.info(
    { worker_id: id, moved: result.moved, remaining: result.remaining },
    'worker draining',
  );
  ctx.body = result;
}
