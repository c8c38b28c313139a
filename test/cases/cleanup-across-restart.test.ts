import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  CoordinatorProcess,
  HEARTBEAT_MS,
  apiClient,
  assertTableMatchesRest,
  connectedWorker,
  routeBody,
  sleep,
  waitInSync,
  type Api,
  type ApiResponse,
} from './support.ts';

const skip = await postgresSkipReason();

/** Calls `request` until it gets a response, as a manager retrying a failed call would. */
async function retryUntilAnswered(request: () => Promise<ApiResponse>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return { response: await request(), at: Date.now() };
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(50);
    }
  }
}

// Cleanups the manager sends around a coordinator restart reach the worker:
// a retried one after a clean stop, and one acknowledged just before a crash.
describe('session cleanup across a coordinator restart', { skip }, () => {
  let db: TestDatabase;
  let coordinator: CoordinatorProcess;
  let api: Api;
  let worker: ScriptedWorker;
  let kept: any;

  before(async () => {
    db = await createTestDatabase();
    coordinator = await CoordinatorProcess.on(db);
    await coordinator.start();
    api = apiClient(() => coordinator.url, coordinator.tokens.manager);
    worker = await connectedWorker(coordinator, { authority: 'proxy-a' });
    kept = (await api('POST', '/routes', routeBody('s2', 'jupyter', '192.0.2.91:8080'))).body;
  });
  after(async () => {
    worker?.kill();
    await coordinator?.stop('SIGKILL');
    await db?.drop();
  });

  async function createSessionRoute(): Promise<string> {
    const created = await api('POST', '/routes', routeBody('s1', 'jupyter', '192.0.2.90:8080'));
    assert.equal(created.status, 201);
    await worker.waitFor(() => worker.table.has(created.body.id), 2000, "s1's route");
    await waitInSync(api, worker.id);
    return created.body.id;
  }

  async function assertKeptRouteUnchanged(): Promise<void> {
    const route = await api('GET', `/routes/${kept.id}`);
    assert.equal(route.body.port, kept.port);
    assert.equal(route.body.revision, kept.revision);
    assert.equal(route.body.status, 'active');
  }

  test('cleanup retried across restart reaches worker', async () => {
    const removed = await createSessionRoute();
    await assertKeptRouteUnchanged();
    await coordinator.stop('SIGTERM');
    await worker.waitFor(() => worker.closeCode !== null, 2000, 'the session closed');

    const retried = retryUntilAnswered(() => api('DELETE', '/sessions/s1/routes'), 30_000);
    await sleep(300);
    await coordinator.start();
    const listeningAt = Date.now();
    const { response, at } = await retried;
    assert.equal(response.status, 200);
    assert.deepEqual(response.body, { deleted: 1 });
    assert.ok(at - listeningAt <= 1000, `answered ${at - listeningAt} ms after listening`);
    await assertKeptRouteUnchanged();

    await worker.connect(true);
    const reconnectedAt = Date.now();
    await worker.waitFor(() => !worker.table.has(removed), 2 * HEARTBEAT_MS, "s1's route removed");
    assert.ok(Date.now() - reconnectedAt <= 2 * HEARTBEAT_MS);
    assert.deepEqual([...worker.table.keys()], [kept.id]);
    await waitInSync(api, worker.id);
    await assertKeptRouteUnchanged();
  });

  test('cleanup acknowledged before crash persists', async () => {
    const removed = await createSessionRoute();
    worker.options.ackDelayMs = 2 * HEARTBEAT_MS;
    const answered = await api('DELETE', '/sessions/s1/routes');
    await coordinator.stop('SIGKILL');
    assert.equal(answered.status, 200);
    assert.deepEqual(answered.body, { deleted: 1 });
    worker.options.ackDelayMs = 0;

    await coordinator.start();
    const sessionRoutes = await api('GET', '/sessions/s1/routes');
    assert.deepEqual(sessionRoutes.body, { routes: [] });
    await assertKeptRouteUnchanged();
    await worker.waitFor(() => worker.closeCode !== null, 2000, 'the session closed');
    await worker.connect(true);
    await worker.waitFor(() => !worker.table.has(removed), 2 * HEARTBEAT_MS, "s1's route removed");
    await waitInSync(api, worker.id);
    await assertTableMatchesRest(api, worker);
    await assertKeptRouteUnchanged();

    const repeated = await api('DELETE', '/sessions/s1/routes');
    assert.equal(repeated.status, 200);
    assert.deepEqual(repeated.body, { deleted: 0 });
  });
});
