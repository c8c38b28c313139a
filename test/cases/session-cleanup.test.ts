import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { EMPTY_DIGEST } from '../../proto/index.ts';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  HEARTBEAT_MS,
  connectedWorker,
  currentRevision,
  eventsSince,
  routeBody,
  tableMessages,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

// Ending a session removes every route of it, whatever the route's status:
// pending (never acknowledged), unavailable (its worker is gone) or active.
describe('session cleanup', { skip }, () => {
  let coordinator: TestCoordinator;
  const workers: ScriptedWorker[] = [];

  before(async () => {
    coordinator = await startCaseCoordinator();
  });
  after(async () => {
    for (const worker of workers) worker.kill();
    await coordinator?.stop();
  });

  test('removes a never-acknowledged pending route', async () => {
    const worker = await connectedWorker(coordinator, { authority: 'proxy-a', autoAck: false });
    workers.push(worker);
    const before = await currentRevision(coordinator.api);
    const body = routeBody('s1', 'jupyter', '192.0.2.10:8080');
    const created = await coordinator.api('POST', '/routes', body);
    assert.equal(created.status, 201);
    assert.equal(created.body.status, 'pending');
    const id = created.body.id;
    await worker.waitFor(() => worker.table.has(id), 1000, 'the created route');
    const mark = worker.messages.length;

    const cleaned = await coordinator.api('DELETE', '/sessions/s1/routes');
    const cleanedAt = Date.now();
    assert.equal(cleaned.status, 200);
    assert.deepEqual(cleaned.body, { deleted: 1 });
    assert.equal((await coordinator.api('GET', `/routes/${id}`)).status, 404);
    await worker.waitFor(() => !worker.table.has(id), 1000, 'the route removed');
    assert.ok(Date.now() - cleanedAt <= 1000);
    const removal = tableMessages(worker, mark)[0];
    if (removal.type === 'diff') assert.deepEqual(removal.removes, [id]);
    assert.equal(removal.digest, EMPTY_DIGEST);

    const events = (await eventsSince(coordinator.api, before)).filter((e) => e.route?.id === id);
    assert.deepEqual(
      events.map((e) => e.type),
      ['route.created', 'route.deleted'],
    );
    assert.equal(events[1].reason, 'session_ended');
  });

  test('removes an unavailable route', async () => {
    const wildcard = await connectedWorker(coordinator, {
      authority: 'proxy-b',
      mode: 'wildcard',
      wildcardDomain: '.apps.example.test',
    });
    workers.push(wildcard);
    const created = await coordinator.api(
      'POST',
      '/routes',
      routeBody('s2', 'lab', '192.0.2.12:8888', { worker_id: wildcard.id }),
    );
    assert.equal(created.status, 201);
    const id = created.body.id;
    const before = created.body.revision;

    assert.equal((await coordinator.api('DELETE', `/workers/${wildcard.id}`)).status, 204);
    assert.equal((await coordinator.api('GET', `/routes/${id}`)).body.status, 'unavailable');
    const cleaned = await coordinator.api('DELETE', '/sessions/s2/routes');
    assert.equal(cleaned.status, 200);
    assert.deepEqual(cleaned.body, { deleted: 1 });

    const later = await connectedWorker(coordinator, {
      authority: 'proxy-c',
      mode: 'wildcard',
      wildcardDomain: '.apps3.example.test',
    });
    workers.push(later);
    assert.deepEqual(later.registration.routes, []);
    const snapshot = later.messages.find((m) => m.type === 'snapshot');
    assert.deepEqual(snapshot?.routes, []);
    // Give the sweeper two periods to move anything it wrongly still treats as stranded.
    await new Promise((resolve) => setTimeout(resolve, 2 * HEARTBEAT_MS));
    assert.equal(later.table.size, 0);
    const moved = (await eventsSince(coordinator.api, before)).filter(
      (e) => e.type === 'route.moved' && e.route?.id === id,
    );
    assert.deepEqual(moved, []);
  });

  test('unknown session removes nothing', async () => {
    const before = await currentRevision(coordinator.api);
    const cleaned = await coordinator.api('DELETE', '/sessions/s3/routes');
    assert.equal(cleaned.status, 200);
    assert.deepEqual(cleaned.body, { deleted: 0 });
    assert.equal(await currentRevision(coordinator.api), before);
    assert.deepEqual(await eventsSince(coordinator.api, before), []);

    const body = routeBody('s3', 'jupyter', '192.0.2.13:8080');
    const created = await coordinator.api('POST', '/routes', body);
    assert.equal(created.status, 201);
  });
});
