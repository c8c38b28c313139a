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
  eventsSince,
  currentRevision,
  routeBody,
  sleep,
  tableMessages,
  waitInSync,
  type Api,
} from './support.ts';

const skip = await postgresSkipReason();

// Fewer rounds than a soak run would use: each round restarts a coordinator
// process (about 2 s), and 6 random kill points per variant keep the suite short.
const ROUNDS = 6;
const ROUTES_PER_SESSION = 20;
const OLD_BACKEND = '192.0.2.30:8000';
const NEW_BACKEND = '192.0.2.31:8000';

function backendsOf(route: any): string {
  return route.backends.map((b: any) => `${b.host}:${b.port}`).sort().join(',');
}

// A coordinator killed at any moment of a batch of writes leaves every route
// wholly before or wholly after its change, with one change-log row per change.
describe('writes interrupted by a coordinator crash', { skip }, () => {
  let db: TestDatabase;
  let coordinator: CoordinatorProcess;
  let api: Api;
  let worker: ScriptedWorker;

  before(async () => {
    db = await createTestDatabase();
    coordinator = await CoordinatorProcess.on(db);
    await coordinator.start();
    api = apiClient(() => coordinator.url, coordinator.tokens.manager);
    worker = await connectedWorker(coordinator, { authority: 'proxy-a' });
  });
  after(async () => {
    worker?.kill();
    await coordinator?.stop('SIGKILL');
    await db?.drop();
  });

  /** Creates the session's routes and waits until the worker has them. */
  async function seedSession(sessionId: string): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < ROUTES_PER_SESSION; i++) {
      const service = `svc-${String(i).padStart(2, '0')}`;
      const created = await api('POST', '/routes', routeBody(sessionId, service, OLD_BACKEND));
      assert.equal(created.status, 201);
      ids.push(created.body.id);
    }
    await worker.waitFor(() => ids.every((id) => worker.table.has(id)), 3000, 'seeded routes');
    await waitInSync(api, worker.id);
    return ids;
  }

  /** Kills the coordinator after `delayMs`, restarts it, and resumes the worker. */
  async function crashAndRestart(delayMs: number): Promise<number> {
    await sleep(delayMs);
    await coordinator.stop('SIGKILL');
    await coordinator.start();
    await worker.waitFor(() => worker.closeCode !== null, 2000, 'the session closed');
    await worker.connect(true);
    return Date.now();
  }

  async function assertWorkerCaughtUp(ids: string[], mark: number, reconnectedAt: number) {
    await waitInSync(api, worker.id, 2 * HEARTBEAT_MS);
    assert.ok(Date.now() - reconnectedAt <= 2 * HEARTBEAT_MS + 500);
    await assertTableMatchesRest(api, worker);
    const removesOurs = (message: Record<string, any>) =>
      message.type === 'diff' && message.removes.some((id: string) => ids.includes(id));
    return tableMessages(worker, mark).filter(removesOurs);
  }

  test('killed parallel PATCHes leave routes whole', async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const sessionId = `patch-${round}`;
      const ids = await seedSession(sessionId);
      const before = await currentRevision(api);
      const mark = worker.messages.length;

      const body = { backends: [{ host: NEW_BACKEND.split(':')[0], port: 8000 }] };
      const patches = ids.map((id) =>
        api('PATCH', `/routes/${id}`, body).then(
          (response) => response.status,
          () => 0,
        ),
      );
      const reconnectedAt = await crashAndRestart(Math.random() * 200);
      const codes = await Promise.all(patches);

      const routes = (await api('GET', `/sessions/${sessionId}/routes`)).body.routes;
      assert.equal(routes.length, ROUTES_PER_SESSION, `round ${round}: every route survives`);
      const byId = new Map(routes.map((route: any) => [route.id, route]));
      const updates = (await eventsSince(api, before)).filter((e) => e.type === 'route.updated');
      for (const [index, id] of ids.entries()) {
        const backends = backendsOf(byId.get(id));
        assert.ok([OLD_BACKEND, NEW_BACKEND].includes(backends), `round ${round}: ${backends}`);
        if (codes[index] === 200) assert.equal(backends, NEW_BACKEND, `round ${round}: got 200`);
        const expected = backends === NEW_BACKEND ? 1 : 0;
        const logged = updates.filter((e) => e.route.id === id).length;
        assert.equal(logged, expected, `round ${round}: change-log rows of ${id}`);
      }
      const removals = await assertWorkerCaughtUp(ids, mark, reconnectedAt);
      assert.deepEqual(removals, [], `round ${round}: the worker never got removes`);
    }
  });

  test('killed session cleanup is all or nothing', async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const sessionId = `delete-${round}`;
      const ids = await seedSession(sessionId);
      const before = await currentRevision(api);
      const mark = worker.messages.length;

      const cleanup = api('DELETE', `/sessions/${sessionId}/routes`).then((r) => r, () => null);
      const reconnectedAt = await crashAndRestart(Math.random() * 50);
      const answer = await cleanup;

      const remaining = (await api('GET', `/sessions/${sessionId}/routes`)).body.routes;
      const left = remaining.length;
      assert.ok([0, ROUTES_PER_SESSION].includes(left), `round ${round}: ${left} left`);
      if (answer?.status === 200) {
        assert.deepEqual(answer.body, { deleted: ROUTES_PER_SESSION });
        assert.equal(remaining.length, 0, `round ${round}: answered 200`);
      }
      const deleted = (await eventsSince(api, before)).filter((e) => e.type === 'route.deleted');
      const gone = ids.filter((id) => !remaining.some((route: any) => route.id === id));
      const deletedIds = deleted.map((event) => event.route.id).sort();
      assert.deepEqual(deletedIds, gone.sort(), `round ${round}: deleted events`);
      await assertWorkerCaughtUp(ids, mark, reconnectedAt);
    }
  });
});
