import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EMPTY_DIGEST } from '../../proto/index.ts';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

const skip = await postgresSkipReason();

describe('worker sessions', { skip }, () => {
  let coordinator: TestCoordinator;

  before(async () => {
    coordinator = await startTestCoordinator({ APPPROXY_HEARTBEAT_INTERVAL_MS: '300' });
  });
  after(() => coordinator?.stop());

  function newWorker(authority: string, extra: Partial<ScriptedWorker['options']> = {}) {
    return new ScriptedWorker({
      coordinatorUrl: coordinator.url,
      workerToken: coordinator.tokens.worker,
      authority,
      ...extra,
    });
  }

  test('snapshot, diff and ack make a route active', async () => {
    const worker = newWorker('sync-a', { portRange: [20000, 20009] });
    await worker.register();
    await worker.connect();
    await worker.waitFor(() => worker.messages.some((m) => m.type === 'snapshot'), 5000, 'snapshot');
    assert.equal(worker.messages[0].digest, EMPTY_DIGEST);

    const created = await coordinator.api('POST', '/routes', {
      session_id: 's1',
      service: 'jupyter',
      worker_id: worker.id,
      backends: [{ host: '192.0.2.10', port: 8080 }],
    });
    assert.equal(created.status, 201);
    assert.equal(created.body.status, 'pending');
    assert.equal(created.body.port, 20000);
    assert.equal(created.body.url, 'http://proxy-a.example.test:20000');
    await worker.waitFor(() => worker.table.has(created.body.id), 2000, 'diff with the route');

    const diff = worker.messages.find((m) => m.type === 'diff');
    assert.deepEqual(diff?.removes, []);
    assert.equal(diff?.revision, created.body.revision);
    await waitForStatus(coordinator, created.body.id, 'active');
    const state = await coordinator.api('GET', `/workers/${worker.id}`);
    assert.equal(state.body.connected, true);
    assert.equal(state.body.lag_revisions, 0);
    await worker.close();
  });

  test('deleting the last route sends an empty table', async () => {
    const worker = newWorker('sync-b', { portRange: [20010, 20019] });
    await worker.register();
    await worker.connect();
    const created = await coordinator.api('POST', '/routes', {
      session_id: 's-last',
      service: 'lab',
      worker_id: worker.id,
      backends: [{ host: '192.0.2.11', port: 8080 }],
    });
    await worker.waitFor(() => worker.table.has(created.body.id), 2000, 'route');
    const removed = await coordinator.api('DELETE', `/routes/${created.body.id}`);
    assert.equal(removed.status, 204);
    await worker.waitFor(() => worker.table.size === 0, 2000, 'empty table');
    const last = worker.messages.at(-1);
    assert.deepEqual(last?.removes, [created.body.id]);
    assert.equal(last?.digest, EMPTY_DIGEST);
    await worker.close();
  });

  test('resume after reconnect gets a diff from its revision', async () => {
    const worker = newWorker('sync-c', { portRange: [20020, 20029] });
    await worker.register();
    await worker.connect();
    await worker.waitFor(() => worker.messages.length > 0, 5000, 'snapshot');
    await worker.close();

    const created = await coordinator.api('POST', '/routes', {
      session_id: 's-resume',
      service: 'lab',
      worker_id: worker.id,
      backends: [{ host: '192.0.2.12', port: 8080 }],
    });
    const from = worker.revision;
    worker.messages.length = 0;
    await worker.connect(true);
    await worker.waitFor(() => worker.messages.length > 0, 5000, 'resume answer');
    assert.equal(worker.messages[0].type, 'diff');
    assert.equal(worker.messages[0].from_revision, from);
    assert.ok(worker.table.has(created.body.id));
    await worker.close();
  });

  test('a silent worker is declared lost in time', async () => {
    const worker = newWorker('sync-lost', { portRange: [20030, 20039] });
    await worker.register();
    await worker.connect();
    await worker.waitFor(() => worker.messages.length > 0, 5000, 'snapshot');
    const stoppedAt = Date.now();
    worker.kill();
    const deadlineMs = 3 * 300 + 1000;
    for (;;) {
      const state = await coordinator.api('GET', `/workers/${worker.id}`);
      if (state.body.status === 'lost') break;
      assert.ok(Date.now() - stoppedAt < deadlineMs + 2000, 'worker not lost within the deadline');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const events = await coordinator.api('GET', '/events?limit=1000');
    const lost = events.body.events.filter(
      (e: any) => e.type === 'worker.lost' && e.worker.id === worker.id,
    );
    assert.equal(lost.length, 1);
  });

  test('session token of a superseded registration is rejected', async () => {
    const first = newWorker('sync-d', { instanceId: 'p1', portRange: [20040, 20049] });
    await first.register();
    await first.connect();
    await first.waitFor(() => first.messages.length > 0, 5000, 'snapshot');
    const second = newWorker('sync-d', { instanceId: 'p1', portRange: [20040, 20049] });
    const registration = await second.register();
    assert.equal(registration.generation, first.registration.generation + 1);
    assert.equal(registration.worker.id, first.id);
    await first.waitFor(() => first.closeCode !== null, 2000, 'close of the old session');
    assert.equal(first.closeCode, 4409);
    await assert.rejects(first.connect(), /401/);
  });
});

async function waitForStatus(coordinator: TestCoordinator, id: string, status: string) {
  const deadline = Date.now() + 3000;
  for (;;) {
    const route = await coordinator.api('GET', `/routes/${id}`);
    if (route.body.status === status) return;
    if (Date.now() > deadline) assert.fail(`route ${id} is ${route.body.status}, not ${status}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
