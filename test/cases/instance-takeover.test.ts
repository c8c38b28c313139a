import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  HEARTBEAT_MS,
  connectedWorker,
  currentRevision,
  eventsSince,
  routeBody,
  scriptedWorker,
  sleep,
  tableMessages,
  waitInSync,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

/** Rounds of two processes registering one instance at once. */
const RACE_ROUNDS = 20;

// A process that registers again with the same authority and instance id
// replaces the old one at once: the old session is fenced off by generation,
// and the worker keeps its id and routes with no failover.
describe('instance takeover', { skip }, () => {
  let coordinator: TestCoordinator;
  const workers: ScriptedWorker[] = [];

  before(async () => {
    coordinator = await startCaseCoordinator();
  });
  after(async () => {
    for (const worker of workers) worker.kill();
    await coordinator?.stop();
  });

  function instance(authority: string, instanceId: string, portRange: [number, number]) {
    const worker = scriptedWorker(coordinator, { authority, instanceId, portRange });
    workers.push(worker);
    return worker;
  }

  async function createRoutes(workerId: string, session: string, count: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < count; i++) {
      const backend = `192.0.2.${60 + i}:8080`;
      const body = routeBody(session, `svc-${i}`, backend, { worker_id: workerId });
      const created = await coordinator.api('POST', '/routes', body);
      assert.equal(created.status, 201);
      ids.push(created.body.id);
    }
    return ids;
  }

  test('replacement takes over a healthy instance', async () => {
    const first = instance('proxy-a', 'p1', [20000, 20099]);
    const registered = await first.register();
    await first.connect();
    const generation = registered.generation;
    const ids = await createRoutes(first.id, 's1', 5);
    await first.waitFor(() => first.table.size === 5, 2000, 'five routes');
    await waitInSync(coordinator.api, first.id);
    const before = await currentRevision(coordinator.api);
    const oldRegistration = first.registration;

    const second = instance('proxy-a', 'p1', [20000, 20099]);
    const replaced = await second.register();
    const replacedAt = Date.now();
    assert.equal(replaced.worker.id, first.id);
    assert.equal(replaced.generation, generation + 1);
    assert.deepEqual(replaced.routes.map((r: any) => r.id).sort(), [...ids].sort());

    await first.waitFor(() => first.closeCode !== null, 1000, 'the old session closed');
    assert.ok(Date.now() - replacedAt <= 1000);
    assert.equal(first.closeCode, 4409);
    assert.ok(first.messages.some((m) => m.type === 'error'), 'an error before the close');

    // The superseded process keeps talking; none of it may count.
    const fenced = await coordinator.api('GET', `/workers/${first.id}`);
    first.heartbeat();
    first.ack();
    await sleep(2 * HEARTBEAT_MS);
    const after = await coordinator.api('GET', `/workers/${first.id}`);
    assert.equal(after.body.last_heartbeat_at, fenced.body.last_heartbeat_at);
    assert.equal(after.body.applied_revision, fenced.body.applied_revision);
    assert.equal(after.body.connected, false, 'no session is open until the replacement connects');
    const stale = scriptedWorker(coordinator, { authority: 'proxy-a' });
    stale.registration = oldRegistration;
    await assert.rejects(stale.connect(), /upgrade 401/);

    await second.connect();
    await second.waitFor(() => tableMessages(second).length > 0, 2000, 'snapshot');
    const [snapshot] = tableMessages(second);
    assert.equal(snapshot.type, 'snapshot');
    assert.deepEqual(snapshot.routes.map((r: any) => r.id).sort(), [...ids].sort());
    await waitInSync(coordinator.api, second.id);

    // Past the lost deadline of the old process's last heartbeat.
    await sleep(3 * HEARTBEAT_MS + 1000);
    const listed = (await coordinator.api('GET', '/workers')).body.workers.filter(
      (w: any) => w.authority === 'proxy-a',
    );
    assert.equal(listed.length, 1);
    assert.equal(listed[0].status, 'alive');
    assert.equal(listed[0].connected, true);
    const events = await eventsSince(coordinator.api, before);
    const bad = events.filter(
      (e) =>
        e.type === 'worker.lost' ||
        ((e.type === 'route.moved' || e.type === 'route.deleted') && ids.includes(e.route?.id)),
    );
    assert.deepEqual(bad, []);
  });

  test('replacement takes over a frozen instance at once', async () => {
    const first = instance('proxy-b', 'p1', [20100, 20199]);
    await first.register();
    await first.connect();
    await createRoutes(first.id, 's2', 2);
    await first.waitFor(() => first.table.size === 2, 2000, 'two routes');
    first.freeze();

    const second = instance('proxy-b', 'p1', [20100, 20199]);
    const startedAt = Date.now();
    const replaced = await second.register();
    assert.ok(Date.now() - startedAt <= 1000);
    assert.equal(replaced.worker.id, first.id);
    await second.connect();
    await waitInSync(coordinator.api, second.id);
    const worker = await coordinator.api('GET', `/workers/${second.id}`);
    assert.equal(worker.body.status, 'alive');
  });

  test('concurrent registrations keep only the newer', async () => {
    const portRange: [number, number] = [20200, 20299];
    const options = { authority: 'proxy-race', instanceId: 'r1', portRange };
    const base = await connectedWorker(coordinator, options);
    workers.push(base);
    await createRoutes(base.id, 's3', 1);
    await base.close();
    for (let round = 0; round < RACE_ROUNDS; round++) {
      const pair = [0, 1].map(() => instance('proxy-race', 'r1', [20200, 20299]));
      const registrations = await Promise.all(pair.map((worker) => worker.register()));
      const isFirstOlder = registrations[0].generation < registrations[1].generation;
      const [older, newer] = isFirstOlder ? pair : [pair[1], pair[0]];
      assert.notEqual(registrations[0].generation, registrations[1].generation);

      const outcomes = await Promise.allSettled(pair.map((worker) => worker.connect()));
      const newerOutcome = outcomes[pair.indexOf(newer)];
      assert.equal(newerOutcome.status, 'fulfilled', `round ${round}: the newer one connects`);
      await newer.waitFor(() => tableMessages(newer).length > 0, 2000, 'snapshot');
      await sleep(100);
      assert.equal(newer.closeCode, null, `round ${round}: the newer stream stays open`);
      const olderOutcome = outcomes[pair.indexOf(older)];
      const olderClosed = olderOutcome.status === 'rejected' || older.closeCode !== null;
      assert.ok(olderClosed, `round ${round}: the older one is rejected or closed`);
      if (older.closeCode !== null) assert.ok(older.closeCode >= 4000 && older.closeCode <= 4999);
      await newer.close();
    }
  });
});
