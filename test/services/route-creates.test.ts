import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

const skip = await postgresSkipReason();

describe('concurrent route creates', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;

  before(async () => {
    coordinator = await startTestCoordinator();
    worker = new ScriptedWorker({
      coordinatorUrl: coordinator.url,
      workerToken: coordinator.tokens.worker,
      authority: 'batch',
      portRange: [30000, 30199],
    });
    await worker.register();
    await worker.connect();
    await worker.waitFor(() => worker.messages.length > 0, 5000, 'snapshot');
  });
  after(async () => {
    await worker?.close();
    await coordinator?.stop();
  });

  function create(sessionId: string, service = 'svc', backendPort = 8080) {
    return coordinator.api('POST', '/routes', {
      session_id: sessionId,
      service,
      backends: [{ host: '192.0.2.60', port: backendPort }],
    });
  }

  test('creates sharing a transaction get the lowest distinct ports', async () => {
    const results = await Promise.all(Array.from({ length: 64 }, (_, i) => create(`many-${i}`)));
    for (const result of results) assert.equal(result.status, 201);
    const ports = results.map((result) => result.body.port).sort((a, b) => a - b);
    assert.deepEqual(ports, Array.from({ length: 64 }, (_, i) => 30000 + i));
    const revisions = new Set(results.map((result) => result.body.revision));
    assert.equal(revisions.size, 64);
  });

  test('identical concurrent creates return one route', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, () => create('same')));
    const created = results.filter((result) => result.status === 201);
    assert.equal(created.length, 1);
    for (const result of results) assert.equal(result.body.id, created[0].body.id);
    assert.equal(results.filter((result) => result.status === 200).length, 19);
  });

  test('concurrent creates with other specs conflict with the winner', async () => {
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => create('rivals', 'svc', 9000 + i)),
    );
    const created = results.filter((result) => result.status === 201);
    assert.equal(created.length, 1);
    const conflicts = results.filter((result) => result.status === 409);
    assert.equal(conflicts.length, 9);
    for (const conflict of conflicts) {
      assert.equal(conflict.body.conflicting_route_id, created[0].body.id);
    }
  });

  test('worker table matches the stored routes after a burst', async () => {
    const stored = await coordinator.api('GET', `/routes?worker_id=${worker.id}&limit=1000`);
    const ids = stored.body.routes.map((route: { id: string }) => route.id).sort();
    await worker.waitFor(() => worker.table.size === ids.length, 5000, 'all routes on the worker');
    assert.deepEqual([...worker.table.keys()].sort(), ids);
    for (const route of stored.body.routes) {
      assert.equal(worker.table.get(route.id)?.revision, route.revision);
    }
  });
});
