import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  addresses,
  connectedWorker,
  currentRevision,
  eventsSince,
  routeBody,
  tableMessages,
  waitInSync,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

// A restarted session keeps its route: the backends change in place, under the
// same id, port and url, and a late retry of the old create cannot undo that.
describe('backend update of a restarted session', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;
  let original: any;
  let updated: any;

  before(async () => {
    coordinator = await startCaseCoordinator();
    worker = await connectedWorker(coordinator, { authority: 'proxy-a' });
    const body = routeBody('s1', 'jupyter', '192.0.2.10:8080');
    const created = await coordinator.api('POST', '/routes', body);
    assert.equal(created.status, 201);
    original = created.body;
    await worker.waitFor(() => worker.table.has(original.id), 2000, 'the route');
    await waitInSync(coordinator.api, worker.id);
  });
  after(async () => {
    worker?.kill();
    await coordinator?.stop();
  });

  test('backend PATCH keeps id, port and url', async () => {
    const mark = worker.messages.length;
    const patched = await coordinator.api('PATCH', `/routes/${original.id}`, {
      backends: [{ host: '192.0.2.11', port: 8081 }],
    });
    assert.equal(patched.status, 200);
    updated = patched.body;
    assert.equal(updated.id, original.id);
    assert.equal(updated.port, original.port);
    assert.equal(updated.url, original.url);
    assert.ok(updated.revision > original.revision);

    const isUpdated = () => worker.table.get(original.id)?.revision === updated.revision;
    await worker.waitFor(isUpdated, 1000, 'the update');
    const messages = tableMessages(worker, mark);
    assert.equal(messages.length, 1);
    assert.equal(messages[0].type, 'diff');
    assert.deepEqual(messages[0].removes, []);
    assert.deepEqual(messages[0].upserts.map((r: any) => r.id), [original.id]);
    assert.deepEqual(addresses(messages[0].upserts[0].backends), ['192.0.2.11:8081']);

    const session = await coordinator.api('GET', '/sessions/s1/routes');
    assert.equal(session.body.routes.length, 1);
    assert.deepEqual(addresses(session.body.routes[0].backends), ['192.0.2.11:8081']);
  });

  test('late old create conflicts without change', async () => {
    await waitInSync(coordinator.api, worker.id);
    const before = await currentRevision(coordinator.api);
    const mark = worker.messages.length;

    const oldSpec = routeBody('s1', 'jupyter', '192.0.2.10:8080');
    const stale = await coordinator.api('POST', '/routes', oldSpec);
    assert.equal(stale.status, 409);
    assert.equal(stale.body.conflicting_route_id, original.id);
    const newSpec = routeBody('s1', 'jupyter', '192.0.2.11:8081');
    const fresh = await coordinator.api('POST', '/routes', newSpec);
    assert.equal(fresh.status, 200);
    assert.equal(fresh.body.id, original.id);
    assert.equal(fresh.body.revision, updated.revision);

    assert.equal(await currentRevision(coordinator.api), before);
    assert.deepEqual(await eventsSince(coordinator.api, before), []);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(tableMessages(worker, mark), []);
  });
});
