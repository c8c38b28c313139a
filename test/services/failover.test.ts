import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  connectedWorker,
  currentRevision,
  eventsOfType,
  eventually,
  resetState,
  routeBody,
  routeWithStatus,
} from './helpers.ts';

const skip = await postgresSkipReason();
const HEARTBEAT_MS = 300;
const MISSES = 3;
/** Time after a worker stops within which it must be lost and its routes moved. */
const FAILOVER_DEADLINE_MS = HEARTBEAT_MS * MISSES + 3000;

describe('failover', { skip }, () => {
  let coordinator: TestCoordinator;
  const workers: ScriptedWorker[] = [];
  /** Revision before the running test; its events come after. */
  let start = 0;

  before(async () => {
    coordinator = await startTestCoordinator({
      APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
      APPPROXY_HEARTBEAT_MISSES: String(MISSES),
    });
  });
  after(() => coordinator?.stop());
  beforeEach(async () => {
    start = await currentRevision(coordinator);
  });
  afterEach(async () => {
    for (const worker of workers.splice(0)) worker.kill();
    await resetState(coordinator);
  });

  async function startWorker(
    options: Parameters<typeof connectedWorker>[1],
    extra: Record<string, unknown> = {},
  ): Promise<ScriptedWorker> {
    const worker = await connectedWorker(coordinator, options, extra);
    workers.push(worker);
    return worker;
  }

  async function createOn(
    worker: ScriptedWorker,
    sessionId: string,
    extra: Record<string, unknown> = {},
  ) {
    const response = await coordinator.api(
      'POST',
      '/routes',
      routeBody(sessionId, 'web', { worker_id: worker.id, ...extra }),
    );
    assert.equal(response.status, 201, JSON.stringify(response.body));
    return response.body;
  }

  function workerStatus(id: string): Promise<string> {
    return coordinator.api('GET', `/workers/${id}`).then((response) => response.body.status);
  }

  test('lost worker routes move to a live worker', async () => {
    const lost = await startWorker({ authority: 'fo-a', portRange: [20000, 20009] });
    const target = await startWorker({
      authority: 'fo-b',
      portRange: [21000, 21009],
      autoAck: false,
    });
    const routes: any[] = [];
    for (const session of ['fo-1', 'fo-2', 'fo-3']) routes.push(await createOn(lost, session));
    await lost.waitFor(() => lost.table.size === 3, 3000, 'three routes on fo-a');

    lost.kill();
    for (const route of routes) {
      const moved = await eventually('route moved', FAILOVER_DEADLINE_MS, async () => {
        const current = await coordinator.api('GET', `/routes/${route.id}`);
        return current.body.worker_id === target.id ? current.body : undefined;
      });
      assert.equal(moved.status, 'pending');
      assert.ok(moved.port >= 21000, `port ${moved.port}`);
      assert.ok(moved.port <= 21009, `port ${moved.port}`);
      assert.equal(moved.url, `http://proxy-a.example.test:${moved.port}`);
      assert.ok(moved.revision > route.revision);
    }
    assert.equal(await workerStatus(lost.id), 'lost');

    const events = await eventsOfType(coordinator, 'route.moved', start);
    assert.equal(events.length, 3);
    for (const event of events) {
      const before = routes.find((route) => route.id === event.route.id);
      assert.deepEqual(event.previous, { worker_id: lost.id, port: before.port, url: before.url });
    }

    await target.waitFor(() => target.table.size === 3, 3000, 'three routes on fo-b');
    target.ack();
    for (const route of routes) await routeWithStatus(coordinator, route.id, 'active');
  });

  test('moves go least loaded first within capacity', async () => {
    const lost = await startWorker({ authority: 'fo-src', portRange: [20000, 20009] });
    const small = await startWorker(
      { authority: 'fo-cap-a', portRange: [21000, 21009] },
      { capacity: 2 },
    );
    const large = await startWorker({ authority: 'fo-cap-b', portRange: [22000, 22009] });
    const existing = await createOn(large, 'cap-existing');
    const routes = [];
    for (let i = 0; i < 6; i++) routes.push(await createOn(lost, `cap-${i}`));

    lost.kill();
    await eventually('every route moved', FAILOVER_DEADLINE_MS, async () => {
      const list = await coordinator.api('GET', `/routes?worker_id=${lost.id}`);
      return list.body.routes.length === 0 ? true : undefined;
    });
    const onSmall = (await coordinator.api('GET', `/routes?worker_id=${small.id}`)).body.routes;
    const onLarge = (await coordinator.api('GET', `/routes?worker_id=${large.id}`)).body.routes;
    assert.equal(onSmall.length, 2);
    assert.equal(onLarge.length, 5);
    const byNumber = (a: number, b: number) => a - b;
    const smallPorts = onSmall.map((route: any) => route.port).sort(byNumber);
    assert.deepEqual(smallPorts, [21000, 21001]);
    const largePorts = onLarge.map((route: any) => route.port).sort(byNumber);
    assert.deepEqual(largePorts, [22000, 22001, 22002, 22003, 22004]);
    assert.equal(onLarge.find((route: any) => route.port === 22000).id, existing.id);
  });

  test('routes with nowhere to go wait, then move', async () => {
    const lost = await startWorker(
      { authority: 'fo-w1', mode: 'wildcard', wildcardDomain: '.w1.example.test' },
    );
    const first = await createOn(lost, 'wait-1', { subdomain: 'custom-name' });
    const second = await createOn(lost, 'wait-2');
    lost.kill();
    await eventually('worker lost', FAILOVER_DEADLINE_MS, async () =>
      (await workerStatus(lost.id)) === 'lost' ? true : undefined,
    );
    // Several sweeps run meanwhile; with no wildcard worker alive nothing moves.
    await new Promise((resolve) => setTimeout(resolve, 4 * HEARTBEAT_MS));
    for (const route of [first, second]) {
      const current = await coordinator.api('GET', `/routes/${route.id}`);
      assert.equal(current.body.status, 'unavailable');
      assert.equal(current.body.worker_id, lost.id);
    }
    assert.equal((await eventsOfType(coordinator, 'route.moved', start)).length, 0);

    const target = await startWorker(
      { authority: 'fo-w2', mode: 'wildcard', wildcardDomain: '.w2.example.test' },
    );
    const moved = await eventually('routes moved to fo-w2', FAILOVER_DEADLINE_MS, async () => {
      const list = await coordinator.api('GET', `/routes?worker_id=${target.id}`);
      return list.body.routes.length === 2 ? list.body.routes : undefined;
    });
    const custom = moved.find((route: any) => route.id === first.id);
    assert.equal(custom.subdomain, 'custom-name');
    assert.equal(custom.url, 'http://custom-name.w2.example.test');
    await routeWithStatus(coordinator, first.id, 'active');
  });

  test('returning worker receives only what it holds now', async () => {
    const returning = await startWorker(
      { authority: 'fo-back', portRange: [22000, 22009] },
      { protocols: ['http', 'tcp'] },
    );
    const target = await startWorker({ authority: 'fo-http', portRange: [23000, 23009] });
    const http1 = await createOn(returning, 'back-1');
    const http2 = await createOn(returning, 'back-2');
    const tcp = await createOn(returning, 'back-3', { protocol: 'tcp' });
    await returning.waitFor(() => returning.table.size === 3, 3000, 'three routes');

    returning.kill();
    await eventually('http routes moved', FAILOVER_DEADLINE_MS, async () => {
      const list = await coordinator.api('GET', `/routes?worker_id=${target.id}`);
      return list.body.routes.length === 2 ? true : undefined;
    });
    const stranded = await coordinator.api('GET', `/routes/${tcp.id}`);
    assert.equal(stranded.body.status, 'unavailable');

    await returning.connect(true);
    await returning.waitFor(
      () => returning.table.size === 1 && returning.table.has(tcp.id),
      3000,
      'table with only the tcp route',
    );
    assert.equal(returning.table.has(http1.id), false);
    assert.equal(returning.table.has(http2.id), false);
    assert.equal(await workerStatus(returning.id), 'alive');
    const recovered = await eventsOfType(coordinator, 'worker.recovered', start);
    assert.equal(recovered.at(-1).worker.id, returning.id);
    await routeWithStatus(coordinator, tcp.id, 'active');
  });

  test('one instance of a set dying moves nothing', async () => {
    const instance = { authority: 'fo-ha', portRange: [24000, 24009] as [number, number] };
    const first = await startWorker({ ...instance, instanceId: 'i1' });
    const second = await startWorker({ ...instance, instanceId: 'i2' });
    const spare = await startWorker({ authority: 'fo-spare', portRange: [25000, 25009] });
    assert.equal(first.id, second.id);
    const route = await createOn(first, 'ha-1');
    await first.waitFor(() => first.table.has(route.id), 3000, 'route on i1');
    await second.waitFor(() => second.table.has(route.id), 3000, 'route on i2');

    first.kill();
    await new Promise((resolve) => setTimeout(resolve, HEARTBEAT_MS * MISSES + 4 * HEARTBEAT_MS));
    assert.equal(await workerStatus(first.id), 'alive');
    assert.equal((await eventsOfType(coordinator, 'route.moved', start)).length, 0);
    assert.equal((await eventsOfType(coordinator, 'worker.lost', start)).length, 0);
    await routeWithStatus(coordinator, route.id, 'active');

    const later = await createOn(second, 'ha-2');
    await second.waitFor(() => second.table.has(later.id), 3000, 'new route on i2');
    await routeWithStatus(coordinator, later.id, 'active');

    second.kill();
    await eventually('routes moved to the spare', FAILOVER_DEADLINE_MS, async () => {
      const list = await coordinator.api('GET', `/routes?worker_id=${spare.id}`);
      return list.body.routes.length === 2 ? true : undefined;
    });
    assert.equal(await workerStatus(first.id), 'lost');
  });

  test('drain stops placements, and with move moves routes', async () => {
    const drained = await startWorker({ authority: 'fo-drain', portRange: [26000, 26009] });
    const other = await startWorker({ authority: 'fo-other', portRange: [27000, 27009] });
    const routes = [await createOn(drained, 'drain-1'), await createOn(drained, 'drain-2')];
    await drained.waitFor(() => drained.table.size === 2, 3000, 'two routes');

    const response = await coordinator.api('POST', `/workers/${drained.id}/drain`);
    assert.equal(response.status, 200);
    assert.equal(response.body.worker.status, 'draining');
    assert.deepEqual([response.body.moved, response.body.remaining], [0, 2]);
    await routeWithStatus(coordinator, routes[0].id, 'active');

    const pinnedBody = routeBody('drain-3', 'web', { worker_id: drained.id });
    const pinned = await coordinator.api('POST', '/routes', pinnedBody);
    assert.equal(pinned.status, 503);
    const placed = await coordinator.api('POST', '/routes', routeBody('drain-4', 'web'));
    assert.equal(placed.body.worker_id, other.id);

    const move = await coordinator.api('POST', `/workers/${drained.id}/drain`, { move: true });
    assert.equal(move.status, 200);
    assert.deepEqual([move.body.moved, move.body.remaining], [2, 0]);
    await drained.waitFor(() => drained.table.size === 0, 3000, 'empty table on fo-drain');
    await other.waitFor(() => other.table.size === 3, 3000, 'three routes on fo-other');
    const events = await eventsOfType(coordinator, 'route.moved', start);
    assert.deepEqual(
      events.map((event) => event.previous.worker_id),
      [drained.id, drained.id],
    );
    for (const route of routes) await routeWithStatus(coordinator, route.id, 'active');
  });

  test('failover of several batches moves every route once', async () => {
    const count = 2500;
    const lost = await startWorker({ authority: 'fo-many', portRange: [30000, 30000 + count - 1] });
    const target = await startWorker({
      authority: 'fo-room',
      portRange: [40000, 40000 + count - 1],
    });
    for (let session = 0; session < count / 100; session++) {
      const routes = Array.from({ length: 100 }, (_, i) => ({
        service: `svc-${i}`,
        worker_id: lost.id,
        backends: [{ host: '192.0.2.30', port: 1000 + i }],
      }));
      const response = await coordinator.api('PUT', `/sessions/many-${session}/routes`, { routes });
      assert.equal(response.status, 200);
    }
    await lost.waitFor(() => lost.table.size === count, 20_000, 'every route on fo-many');

    lost.kill();
    const isComplete = () => target.table.size === count;
    await target.waitFor(isComplete, FAILOVER_DEADLINE_MS + 10_000, 'every route on fo-room');
    const ports = new Set([...target.table.values()].map((route) => route.port as number));
    assert.equal(ports.size, count);
    assert.equal(Math.min(...ports), 40000);
    assert.equal(Math.max(...ports), 40000 + count - 1);
    const moved = await eventsOfType(coordinator, 'route.moved', start);
    assert.equal(moved.length, count);
    assert.equal(new Set(moved.map((event) => event.route.id)).size, count);
  });

  test('drain of a lost or unknown worker is refused', async () => {
    const lost = await startWorker({ authority: 'fo-gone', portRange: [28000, 28009] });
    lost.kill();
    await eventually('worker lost', FAILOVER_DEADLINE_MS, async () =>
      (await workerStatus(lost.id)) === 'lost' ? true : undefined,
    );
    const refused = await coordinator.api('POST', `/workers/${lost.id}/drain`, { move: true });
    assert.equal(refused.status, 409);
    const unknownId = '0b6f7a52-9d6e-4b39-9b8b-5c0d3f1e2a77';
    const unknown = await coordinator.api('POST', `/workers/${unknownId}/drain`);
    assert.equal(unknown.status, 404);
  });
});
