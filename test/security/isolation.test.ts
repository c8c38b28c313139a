import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

const skip = await postgresSkipReason();

describe('worker isolation', { skip }, () => {
  let coordinator: TestCoordinator;
  let first: ScriptedWorker;
  let second: ScriptedWorker;
  let firstRouteId: string;
  let secondRouteId: string;

  before(async () => {
    coordinator = await startTestCoordinator();
    const options = { coordinatorUrl: coordinator.url, workerToken: coordinator.tokens.worker };
    first = new ScriptedWorker({ ...options, authority: 'iso-a', portRange: [20000, 20009] });
    second = new ScriptedWorker({ ...options, authority: 'iso-b', portRange: [20010, 20019], autoAck: false });
    for (const worker of [first, second]) {
      await worker.register();
      await worker.connect();
      await worker.waitFor(() => worker.messages.length > 0, 5000, 'snapshot');
    }
    firstRouteId = await createOn(first.id, 'a');
    secondRouteId = await createOn(second.id, 'b');
    await first.waitFor(() => first.table.has(firstRouteId), 2000, 'own route');
    await second.waitFor(() => second.table.has(secondRouteId), 2000, 'own route');
  });
  after(async () => {
    await first?.close();
    await second?.close();
    await coordinator?.stop();
  });

  async function createOn(workerId: string, session: string): Promise<string> {
    const created = await coordinator.api('POST', '/routes', {
      session_id: session,
      service: 'svc',
      worker_id: workerId,
      backends: [{ host: '192.0.2.20', port: 8080 }],
    });
    assert.equal(created.status, 201);
    return created.body.id;
  }

  test('session receives only its own routes', () => {
    assert.deepEqual([...first.table.keys()], [firstRouteId]);
    assert.deepEqual([...second.table.keys()], [secondRouteId]);
    const foreign = first.messages.flatMap((m) => [...(m.upserts ?? []), ...(m.routes ?? [])]);
    assert.ok(foreign.every((route: any) => route.worker_id === first.id));
  });

  test('ack for a revision never sent is rejected', async () => {
    const before = first.messages.length;
    first.send({ type: 'ack', revision: 999_999, digest: '0'.repeat(32) });
    await first.waitFor(() => first.messages.length > before, 2000, 'error reply');
    assert.equal(first.messages.at(-1)?.type, 'error');
    const state = await coordinator.api('GET', `/workers/${first.id}`);
    assert.ok(state.body.applied_revision < 999_999);
  });

  test('acks of one worker leave another pending', async () => {
    const route = await coordinator.api('GET', `/routes/${secondRouteId}`);
    assert.equal(route.body.status, 'pending');
    const other = await coordinator.api('GET', `/workers/${second.id}`);
    assert.ok(other.body.applied_revision < route.body.revision);
  });

  test('session token looks up only its own worker', async () => {
    const token = first.registration.session_token;
    const own = await coordinator.api('GET', `/lookup?worker_id=${first.id}&port=20000`, undefined, token);
    assert.equal(own.status, 200);
    assert.equal(own.body.id, firstRouteId);
    const foreign = await coordinator.api('GET', `/lookup?worker_id=${second.id}&port=20010`, undefined, token);
    assert.equal(foreign.status, 404);
  });
});
