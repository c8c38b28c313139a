import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  connectedWorker,
  currentRevision,
  eventsSince,
  listAll,
  routeBody,
  tableMessages,
  waitInSync,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

// Session ids and services that share prefixes, or contain LIKE wildcards,
// must never be caught by a delete aimed at a neighbour.
const ROUTES = [
  ['u1', 'jupyter'],
  ['u1', 'jupyter-lab'],
  ['u10', 'jupyter'],
  ['u1.named', 'jupyter'],
  ['u_1', 'jupyter'],
  ['uX1', 'jupyter'],
  ['u%', 'jupyter'],
] as const;

describe('deletes remove only their target', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;
  const ids = new Map<string, string>();
  const revisions = new Map<string, number>();
  let startRevision = 0;

  before(async () => {
    coordinator = await startCaseCoordinator();
    worker = await connectedWorker(coordinator, { authority: 'proxy-a' });
    startRevision = await currentRevision(coordinator.api);
    for (const [index, [session, service]] of ROUTES.entries()) {
      const body = routeBody(session, service, `192.0.2.${20 + index}:8080`);
      const created = await coordinator.api('POST', '/routes', body);
      assert.equal(created.status, 201);
      ids.set(`${session}/${service}`, created.body.id);
      revisions.set(created.body.id, created.body.revision);
    }
    await worker.waitFor(() => worker.table.size === ROUTES.length, 2000, 'all routes');
    await waitInSync(coordinator.api, worker.id);
  });
  after(async () => {
    worker?.kill();
    await coordinator?.stop();
  });

  test('route delete removes exactly one id', async () => {
    const id = ids.get('u1/jupyter') as string;
    const mark = worker.messages.length;
    assert.equal((await coordinator.api('DELETE', `/routes/${id}`)).status, 204);
    await worker.waitFor(() => !worker.table.has(id), 1000, 'the route removed');
    const [diff] = tableMessages(worker, mark);
    assert.equal(diff.type, 'diff');
    assert.deepEqual(diff.removes, [id]);
    assert.deepEqual(diff.upserts, []);

    const again = await coordinator.api('DELETE', `/routes/${id}`);
    assert.equal(again.status, 404);
    assert.equal(again.headers.get('content-type'), 'application/problem+json');
  });

  test('session delete matches the whole id', async () => {
    const u1 = await coordinator.api('DELETE', '/sessions/u1/routes');
    assert.equal(u1.status, 200);
    assert.deepEqual(u1.body, { deleted: 1 });
    const underscore = await coordinator.api('DELETE', '/sessions/u_1/routes');
    assert.deepEqual(underscore.body, { deleted: 1 });
    const percent = await coordinator.api('DELETE', `/sessions/${encodeURIComponent('u%')}/routes`);
    assert.deepEqual(percent.body, { deleted: 1 });

    const before = await currentRevision(coordinator.api);
    const nobody = await coordinator.api('DELETE', '/sessions/nobody/routes');
    assert.equal(nobody.status, 200);
    assert.deepEqual(nobody.body, { deleted: 0 });
    assert.equal(await currentRevision(coordinator.api), before);
    assert.deepEqual(await eventsSince(coordinator.api, before), []);
  });

  test('neighbour routes stay untouched', async () => {
    const keys = ['u10/jupyter', 'u1.named/jupyter', 'uX1/jupyter'];
    const kept = keys.map((key) => ids.get(key) as string);
    await worker.waitFor(() => worker.table.size === kept.length, 1000, 'the worker table');
    assert.deepEqual([...worker.table.keys()].sort(), [...kept].sort());
    const rest = await listAll(coordinator.api, '/routes');
    assert.deepEqual(rest.map((r) => r.id).sort(), [...kept].sort());
    for (const route of rest) assert.equal(route.revision, revisions.get(route.id));
    for (const id of kept) assert.equal(worker.table.get(id)?.revision, revisions.get(id));

    const deleted = (await eventsSince(coordinator.api, startRevision)).filter(
      (e) => e.type === 'route.deleted',
    );
    assert.equal(deleted.length, ROUTES.length - kept.length);
  });
});
