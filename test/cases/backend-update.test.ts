import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  HEARTBEAT_MS,
  connectedWorker,
  currentRevision,
  eventsSince,
  routeBody,
  tableMessages,
  waitInSync,
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
    coordinator = await startTestCoordinator({ APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS) });
    worker = await connectedWorker(coordinator, { authority: 'proxy-a' });
    const created = await coordinator.api('POST', '/routes', routeBody('s1', 'jupyter', '192.0.2.10:8080'));
    assert.equal(created.status, 201);
    original = created.body;
    await worker.waitFor(() => worker.table.has(original.id), 2000, 'the route');
    await waitInSync(coordinator.api, worker.id);
  });
  after(async () => {
    worker?.kill();
    await coordinator?.stop();
  });

  test('PATCH of the backends changes the route in place', async () => {
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

    await worker.waitFor(() => worker.table.get(original.id)?.revision === updated.revision, 1000, 'the update');
    const messages = tableMessages(worker, mark);
    assert.equal(messages.length, 1);
    assert.equal(messages[0].type, 'diff');
    assert.deepEqual(messages[0].removes, []);
    assert.deepEqual(messages[0].upserts.map((r: any) => r.id), [original.id]);
    assert.deepEqual(messages[0].upserts[0].backends.map((b: any) => `${b.host}:${b.port}`), ['192.0.2.11:8081']);

    const session = await coordinator.api('GET', '/sessions/s1/routes');
    assert.equal(session.body.routes.length, 1);
    assert.deepEqual(session.body.routes[0].backends.map((b: any) => `${b.host}:${b.port}`), ['192.0.2.11:8081']);
  });

  test('a late retry of the old create conflicts and changes nothing', async () => {
    await waitInSync(coordinator.api, worker.id);
    const before = await currentRevision(coordinator.api);
    const mark = worker.messages.length;

    const stale = await coordinator.api('POST', '/routes', routeBody('s1', 'jupyter', '192.0.2.10:8080'));
    assert.equal(stale.status, 409);
    assert.equal(stale.body.conflicting_route_id, original.id);
    const fresh = await coordinator.api('POST', '/routes', routeBody('s1', 'jupyter', '192.0.2.11:8081'));
    assert.equal(fresh.status, 200);
    assert.equal(fresh.body.id, original.id);
    assert.equal(fresh.body.revision, updated.revision);

    assert.equal(await currentRevision(coordinator.api), before);
    assert.deepEqual(await eventsSince(coordinator.api, before), []);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(tableMessages(worker, mark), []);
  });
});
