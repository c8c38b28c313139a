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
  sleep,
  tableMessages,
  waitInSync,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

const T1 = { host: '192.0.2.70', port: 8000 };
const T2 = { host: '192.0.2.71', port: 8000 };

// Writes that change nothing take no revision and reach no worker. A burst of
// real changes reaches a slow worker as one ordered chain ending on the last.
describe('update churn', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;
  let route: any;

  before(async () => {
    coordinator = await startCaseCoordinator();
    worker = await connectedWorker(coordinator, { authority: 'proxy-a' });
    const created = await coordinator.api('POST', '/routes', {
      session_id: 's1',
      service: 'jupyter',
      backends: [T1, T2],
    });
    assert.equal(created.status, 201);
    route = created.body;
    await worker.waitFor(() => worker.table.has(route.id), 2000, 'the route');
    await waitInSync(coordinator.api, worker.id);
  });
  after(async () => {
    worker?.kill();
    await coordinator?.stop();
  });

  test('same-spec writes change nothing', async () => {
    const before = await currentRevision(coordinator.api);
    const mark = worker.messages.length;
    for (let i = 0; i < 100; i++) {
      const same = await coordinator.api('PATCH', `/routes/${route.id}`, { backends: [T1, T2] });
      assert.equal(same.status, 200);
      assert.equal(same.body.revision, route.revision);
    }
    const swapped = await coordinator.api('PATCH', `/routes/${route.id}`, { backends: [T2, T1] });
    assert.equal(swapped.body.revision, route.revision);
    const repeated = await coordinator.api('POST', '/routes', {
      session_id: 's1',
      service: 'jupyter',
      backends: [T2, { ...T1, weight: 1 }],
    });
    assert.equal(repeated.status, 200);
    assert.equal(repeated.body.id, route.id);

    await sleep(5 * HEARTBEAT_MS);
    assert.equal(await currentRevision(coordinator.api), before);
    assert.deepEqual(await eventsSince(coordinator.api, before), []);
    assert.deepEqual(tableMessages(worker, mark), []);
    const stored = await coordinator.api('GET', `/routes/${route.id}`);
    assert.equal(stored.body.revision, route.revision);
  });

  test('burst reaches slow worker in order', async () => {
    worker.options.ackDelayMs = 2 * HEARTBEAT_MS;
    const mark = worker.messages.length;
    // Sent back to back, one after the other so they commit in order. That takes well under
    // a second on an idle machine, inside the delay of the worker's acks.
    let last: any;
    for (let i = 0; i < 50; i++) {
      const backends = i % 2 === 0 ? [T1] : [T2];
      last = await coordinator.api('PATCH', `/routes/${route.id}`, { backends });
      assert.equal(last.status, 200);
    }
    assert.deepEqual(last.body.backends.map((b: any) => b.host), [T2.host]);

    await worker.waitFor(
      () => worker.table.get(route.id)?.revision === last.body.revision,
      5 * HEARTBEAT_MS,
      'the last write',
    );
    // Let the delayed acks arrive: nothing more about the route may follow.
    await sleep(3 * HEARTBEAT_MS);
    const messages = tableMessages(worker, mark);
    let previous = route.revision;
    for (const message of messages) {
      assert.ok(message.revision > previous, `revision ${message.revision} after ${previous}`);
      if (message.type === 'diff') assert.equal(message.from_revision, previous);
      previous = message.revision;
    }
    const held = worker.table.get(route.id);
    assert.equal(held?.revision, last.body.revision);
    assert.deepEqual(held?.backends.map((b) => b.host), [T2.host]);
    assert.equal(messages.at(-1)?.revision, last.body.revision);
    await waitInSync(coordinator.api, worker.id);
  });
});
