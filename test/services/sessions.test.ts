import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { connectedWorker, eventsOfType, registerWorker, resetState } from './helpers.ts';

const skip = await postgresSkipReason();

function spec(service: string, backendPort: number, extra: Record<string, unknown> = {}) {
  return { service, backends: [{ host: '192.0.2.20', port: backendPort }], ...extra };
}

describe('session route sets', { skip }, () => {
  let coordinator: TestCoordinator;

  before(async () => {
    coordinator = await startTestCoordinator({ APPPROXY_HEARTBEAT_INTERVAL_MS: '60000' });
  });
  after(() => coordinator?.stop());
  afterEach(() => resetState(coordinator));

  const put = (sessionId: string, routes: unknown[]) =>
    coordinator.api('PUT', `/sessions/${encodeURIComponent(sessionId)}/routes`, { routes });

  test('creates the listed routes', async () => {
    await registerWorker(coordinator, 'set-create', { port_range: [20000, 20009] });
    const response = await put('s1', [spec('jupyter', 8888), spec('tensorboard', 6006)]);
    assert.equal(response.status, 200);
    assert.equal(response.body.created, 2);
    assert.equal(response.body.updated, 0);
    assert.equal(response.body.deleted, 0);
    const services = response.body.routes.map((route: any) => route.service);
    assert.deepEqual(services, ['jupyter', 'tensorboard']);
    const ports = response.body.routes.map((route: any) => route.port).sort();
    assert.deepEqual(ports, [20000, 20001]);
  });

  test('same list again changes nothing', async () => {
    await registerWorker(coordinator, 'set-same');
    const first = await put('s2', [spec('jupyter', 8888)]);
    const revision = (await coordinator.api('GET', '/events')).body.revision;
    const again = await put('s2', [spec('jupyter', 8888)]);
    assert.deepEqual(
      { created: again.body.created, updated: again.body.updated, deleted: again.body.deleted },
      { created: 0, updated: 0, deleted: 0 },
    );
    assert.equal(again.body.routes[0].id, first.body.routes[0].id);
    assert.equal((await coordinator.api('GET', '/events')).body.revision, revision);
  });

  test('changed, missing and new services', async () => {
    await registerWorker(coordinator, 'set-mixed');
    const first = await put('s3', [spec('jupyter', 8888), spec('ssh-web', 2222)]);
    const jupyterId = first.body.routes.find((route: any) => route.service === 'jupyter').id;
    const changed = spec('jupyter', 9999, { labels: { v: '2' } });
    const second = await put('s3', [changed, spec('vscode', 8080)]);
    assert.equal(second.body.created, 1);
    assert.equal(second.body.updated, 1);
    assert.equal(second.body.deleted, 1);
    const jupyter = second.body.routes.find((route: any) => route.service === 'jupyter');
    assert.equal(jupyter.id, jupyterId);
    assert.equal(jupyter.backends[0].port, 9999);
    assert.deepEqual(jupyter.labels, { v: '2' });
    const services = second.body.routes.map((route: any) => route.service);
    assert.deepEqual(services, ['jupyter', 'vscode']);
  });

  test('empty list deletes every route', async () => {
    await registerWorker(coordinator, 'set-empty');
    await put('s4', [spec('jupyter', 8888), spec('lab', 8889)]);
    const cleared = await put('s4', []);
    assert.equal(cleared.body.deleted, 2);
    assert.deepEqual(cleared.body.routes, []);
  });

  test('protocol change replaces the route', async () => {
    await registerWorker(coordinator, 'set-replace', { protocols: ['http', 'tcp'] });
    const first = await put('s5', [spec('shell', 2222)]);
    const second = await put('s5', [spec('shell', 2222, { protocol: 'tcp' })]);
    assert.equal(second.body.created, 1);
    assert.equal(second.body.deleted, 1);
    assert.notEqual(second.body.routes[0].id, first.body.routes[0].id);
    assert.match(second.body.routes[0].url, /^tcp:\/\//);
  });

  test('port freed by the same change can be requested', async () => {
    await registerWorker(coordinator, 'set-reuse', { port_range: [20000, 20009] });
    await put('s6', [spec('old', 1000, { port: 20003 })]);
    const swapped = await put('s6', [spec('new', 1000, { port: 20003 })]);
    assert.equal(swapped.status, 200);
    assert.equal(swapped.body.routes[0].service, 'new');
    assert.equal(swapped.body.routes[0].port, 20003);
  });

  test('taken port fails the whole change', async () => {
    await registerWorker(coordinator, 'set-conflict', { port_range: [20000, 20009] });
    const other = await coordinator.api('POST', '/routes', {
      session_id: 'other',
      service: 'web',
      port: 20005,
      backends: [{ host: '192.0.2.1', port: 80 }],
    });
    await put('s7', [spec('keep', 1000)]);
    const revision = (await coordinator.api('GET', '/events')).body.revision;
    const failed = await put('s7', [spec('keep', 2000), spec('clash', 1000, { port: 20005 })]);
    assert.equal(failed.status, 409);
    assert.equal(failed.body.conflicting_route_id, other.body.id);
    assert.equal((await coordinator.api('GET', '/events')).body.revision, revision);
    const stored = await coordinator.api('GET', '/sessions/s7/routes');
    assert.equal(stored.body.routes.length, 1);
    assert.equal(stored.body.routes[0].backends[0].port, 1000);
  });

  test('no room fails the whole change with 503', async () => {
    await registerWorker(coordinator, 'set-full', { capacity: 2 });
    const failed = await put('s8', [spec('a', 1), spec('b', 2), spec('c', 3)]);
    assert.equal(failed.status, 503);
    const stored = await coordinator.api('GET', '/sessions/s8/routes');
    assert.deepEqual(stored.body.routes, []);
  });

  test('duplicate service is a 400', async () => {
    const failed = await put('s9', [spec('a', 1), spec('a', 2)]);
    assert.equal(failed.status, 400);
    assert.equal(failed.body.issues[0].path, 'routes');
  });

  test('session_id inside an item is a 400', async () => {
    const failed = await put('s10', [{ ...spec('a', 1), session_id: 's10' }]);
    assert.equal(failed.status, 400);
    assert.equal(failed.body.issues[0].path, 'routes.0.session_id');
  });

  test('deleted routes record reason api', async () => {
    await registerWorker(coordinator, 'set-reason');
    await put('s11', [spec('a', 1)]);
    await put('s11', []);
    const deleted = await eventsOfType(coordinator, 'route.deleted');
    assert.equal(deleted.at(-1).reason, 'api');
  });

  test('session restarted elsewhere reaches the worker as one diff', async () => {
    const worker = await connectedWorker(coordinator, {
      authority: 'set-diff',
      portRange: [26000, 26099],
    });
    const services = ['jupyter', 'lab', 'tensorboard', 'vscode', 'shell'];
    await put('s12', services.map((service, i) => spec(service, 8000 + i)));
    await worker.waitFor(() => worker.table.size === 5, 3000, 'five routes');

    const messagesBefore = worker.messages.length;
    const moved = services.map((service, i) => ({
      service,
      backends: [{ host: '198.51.100.7', port: 9000 + i }],
    }));
    const response = await put('s12', moved);
    assert.equal(response.body.updated, 5);
    await worker.waitFor(
      () => [...worker.table.values()].every((route) => route.backends[0].host === '198.51.100.7'),
      3000,
      'new backends',
    );
    const diffs = worker.messages.slice(messagesBefore).filter((m) => m.type === 'diff');
    assert.equal(diffs.length, 1);
    assert.equal(diffs[0].upserts.length, 5);
    assert.deepEqual(diffs[0].removes, []);
    await worker.close();
  });
});
