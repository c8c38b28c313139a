import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { tableDigest } from '../../proto/index.ts';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import { startCoordinatorProcess, type CoordinatorProcess } from '../helpers/processes.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';
import { apiFor, eventually, readEvents, restRoutes, routeBody, type Api } from './support.ts';

const skip = await postgresSkipReason();
const WRITERS = 24;

/** One writer's record of its route: the last write that got a response, and one that got none. */
interface RouteHistory {
  id: string | null;
  /** Revision of the last write that got a 2xx, or `deleted`. */
  confirmed: number | 'deleted' | null;
  /** A write sent when the coordinator died, whose outcome is unknown. */
  unanswered: 'create' | 'patch' | 'delete' | null;
}

/** Creates, patches and deletes routes one after another until a request fails. */
async function writeUntilFailure(
  api: Api,
  workerId: string,
  writer: number,
  highest: { revision: number },
) {
  const histories: RouteHistory[] = [];
  for (let round = 0; ; round++) {
    const history: RouteHistory = { id: null, confirmed: null, unanswered: null };
    histories.push(history);
    const step = async (kind: 'create' | 'patch' | 'delete', send: () => Promise<any>) => {
      history.unanswered = kind;
      const response = await send();
      assert.ok(response.status < 300, `${kind} answered ${response.status}`);
      history.unanswered = null;
      return response;
    };
    try {
      const body = routeBody(workerId, `k${writer}-${round}`);
      const created = await step('create', () => api('POST', '/routes', body));
      history.id = created.body.id;
      history.confirmed = created.body.revision;
      highest.revision = Math.max(highest.revision, created.body.revision);
      const patched = await step('patch', () =>
        api('PATCH', `/routes/${history.id}`, {
          backends: [{ host: '192.0.2.60', port: 7000 + round }],
        }),
      );
      history.confirmed = patched.body.revision;
      highest.revision = Math.max(highest.revision, patched.body.revision);
      if (round % 2 === 1) {
        await step('delete', () => api('DELETE', `/routes/${history.id}`));
        history.confirmed = 'deleted';
      }
    } catch {
      return histories;
    }
  }
}

describe('coordinator killed during a burst', { skip }, () => {
  let db: TestDatabase;
  let coordinator: CoordinatorProcess;
  let worker: ScriptedWorker;

  before(async () => {
    db = await createTestDatabase();
    coordinator = await startCoordinatorProcess({ databaseUrl: db.url, dataDir: db.dataDir });
  });
  after(async () => {
    worker?.kill();
    coordinator?.child.kill('SIGKILL');
    await sleep(200);
    await db?.drop();
  });

  test('acknowledged writes survive and the worker catches up', { timeout: 120_000 }, async () => {
    const tokens = await coordinator.tokens();
    const before = apiFor(coordinator.url, tokens.manager);
    worker = new ScriptedWorker({
      coordinatorUrl: coordinator.url,
      workerToken: tokens.worker,
      portRange: [20000, 29999],
    });
    await worker.register();
    await worker.connect();
    const hasSnapshot = () => worker.messages.some((m) => m.type === 'snapshot');
    await worker.waitFor(hasSnapshot, 10_000, 'snapshot');

    const highest = { revision: 0 };
    const writers = Array.from({ length: WRITERS }, (_, i) => {
      return writeUntilFailure(before, worker.id, i, highest);
    });
    const isUnderWay = () => (highest.revision >= 200 ? true : undefined);
    await eventually('a burst under way', 10_000, isUnderWay);
    coordinator.child.kill('SIGKILL');
    const histories = (await Promise.all(writers)).flat();
    const seenByWorker = worker.revision;
    await worker.waitFor(() => worker.closeCode !== null, 5000, 'session closed by the kill');

    coordinator = await startCoordinatorProcess({ databaseUrl: db.url, dataDir: db.dataDir });
    const api = apiFor(coordinator.url, tokens.manager);
    for (const history of histories) await assertSurvived(api, history);

    const health = await api('GET', '/health');
    assert.ok(health.body.revision >= Math.max(highest.revision, seenByWorker));
    const next = await api('POST', '/routes', routeBody(worker.id, 'after-restart'));
    assert.equal(next.status, 201);
    assert.ok(next.body.revision > Math.max(highest.revision, seenByWorker));
    const events = await readEvents(api);
    assert.deepEqual(
      events.map((event) => event.revision),
      Array.from({ length: events.length }, (_, i) => i + 1),
    );

    worker.options.coordinatorUrl = coordinator.url;
    const reconnectedAt = Date.now();
    await worker.connect(true);
    const expected = tableDigest(await restRoutes(api, worker.id));
    await worker.waitFor(() => worker.digest === expected, 5000, 'digest of the database');
    assert.ok(Date.now() - reconnectedAt < 5000);
    assert.ok(worker.table.has(next.body.id));
  });
});

/** Checks one route against the responses its writer received before the kill. */
async function assertSurvived(api: Api, history: RouteHistory): Promise<void> {
  if (history.id === null) return;
  const response = await api('GET', `/routes/${history.id}`);
  if (history.confirmed === 'deleted') {
    assert.equal(response.status, 404, `deleted route ${history.id} is back`);
    return;
  }
  if (history.unanswered === 'delete' && response.status === 404) return;
  const what = `route ${history.id} acknowledged at ${history.confirmed}`;
  assert.equal(response.status, 200, `${what} is gone`);
  if (history.unanswered === null) assert.equal(response.body.revision, history.confirmed);
  else assert.ok(response.body.revision >= (history.confirmed as number));
}
