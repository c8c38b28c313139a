import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EMPTY_DIGEST } from '../../proto/index.ts';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  connectedWorker,
  currentRevision,
  routeBody,
  tableMessages,
  waitInSync,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

// An empty table is a state to push like any other, never "nothing to apply".
describe('last route removal', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;

  before(async () => {
    coordinator = await startCaseCoordinator();
    worker = await connectedWorker(coordinator, { authority: 'proxy-a' });
  });
  after(async () => {
    worker?.kill();
    await coordinator?.stop();
  });

  /** Creates one route for s1 and waits until the worker is in sync with it. */
  async function createOnlyRoute(): Promise<string> {
    const body = routeBody('s1', 'jupyter', '192.0.2.10:8080');
    const created = await coordinator.api('POST', '/routes', body);
    assert.equal(created.status, 201);
    await worker.waitFor(() => worker.table.has(created.body.id), 2000, 'the route');
    await waitInSync(coordinator.api, worker.id);
    return created.body.id;
  }

  /** Checks that the worker got an empty table at the current revision and is in sync. */
  async function assertEmptied(id: string, mark: number, removedAt: number): Promise<void> {
    await worker.waitFor(() => worker.table.size === 0, 1000, 'the route removed');
    assert.ok(Date.now() - removedAt <= 1000);
    const [message] = tableMessages(worker, mark);
    const revision = await currentRevision(coordinator.api);
    assert.equal(message.revision, revision);
    assert.equal(message.digest, EMPTY_DIGEST);
    if (message.type === 'diff') {
      assert.deepEqual(message.removes, [id]);
      assert.deepEqual(message.upserts, []);
    } else {
      assert.deepEqual(message.routes, []);
    }
    assert.equal(worker.digest, EMPTY_DIGEST);
    await waitInSync(coordinator.api, worker.id);
    const state = await coordinator.api('GET', `/workers/${worker.id}`);
    assert.equal(state.body.route_count, 0);
    assert.equal(state.body.applied_revision, revision);
  }

  test('deleting the only route empties the table', async () => {
    const id = await createOnlyRoute();
    const mark = worker.messages.length;
    const removed = await coordinator.api('DELETE', `/routes/${id}`);
    assert.equal(removed.status, 204);
    await assertEmptied(id, mark, Date.now());
  });

  test('fresh session gets an empty snapshot', async () => {
    await worker.close();
    const registration = await worker.register();
    assert.deepEqual(registration.routes, []);
    const mark = worker.messages.length;
    await worker.connect();
    await worker.waitFor(() => tableMessages(worker, mark).length > 0, 2000, 'snapshot');
    const [snapshot] = tableMessages(worker, mark);
    assert.equal(snapshot.type, 'snapshot');
    assert.ok(Array.isArray(snapshot.routes), 'routes is present as an array');
    assert.equal(snapshot.routes.length, 0);
    assert.equal(snapshot.revision, await currentRevision(coordinator.api));
    assert.equal(snapshot.digest, EMPTY_DIGEST);
  });

  test('ending the only session empties the table', async () => {
    const id = await createOnlyRoute();
    const mark = worker.messages.length;
    const cleaned = await coordinator.api('DELETE', '/sessions/s1/routes');
    assert.equal(cleaned.status, 200);
    assert.deepEqual(cleaned.body, { deleted: 1 });
    await assertEmptied(id, mark, Date.now());
  });
});
