import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { currentRevision, eventsOfType, registerWorker, resetState, routeBody } from '../services/helpers.ts';

const skip = await postgresSkipReason();

// Workers register over REST and never heartbeat, so the interval is long enough that none is
// declared lost while a test runs.
describe('routes of a worker that registers again with another config', { skip }, () => {
  let coordinator: TestCoordinator;

  before(async () => {
    coordinator = await startTestCoordinator({ APPPROXY_HEARTBEAT_INTERVAL_MS: '60000' });
  });
  after(() => coordinator?.stop());
  afterEach(() => resetState(coordinator));

  async function createOn(workerId: string, count: number, prefix: string): Promise<any[]> {
    const routes: any[] = [];
    for (let i = 0; i < count; i++) {
      const response = await coordinator.api('POST', '/routes', routeBody(`${prefix}-${i}`, 'web', { worker_id: workerId }));
      assert.equal(response.status, 201, JSON.stringify(response.body));
      routes.push(response.body);
    }
    return routes;
  }

  const read = async (id: string) => (await coordinator.api('GET', `/routes/${id}`)).body;

  test('narrower range moves routes outside it', async () => {
    const narrowed = await registerWorker(coordinator, 'narrowed', { port_range: [24000, 24005] });
    const routes = await createOn(narrowed.id, 6, 'narrow');
    const other = await registerWorker(coordinator, 'spare', { port_range: [25000, 25009] });
    const since = await currentRevision(coordinator);

    await registerWorker(coordinator, 'narrowed', { port_range: [24000, 24002] });

    const moved = await eventsOfType(coordinator, 'route.moved', since);
    assert.deepEqual(moved.map((event) => event.route.id).sort(), routes.slice(3).map((r) => r.id).sort());
    for (const route of routes.slice(3)) {
      const now = await read(route.id);
      assert.equal(now.worker_id, other.id);
      assert.ok(now.port >= 25000, `port ${now.port}`);
      assert.ok(now.port <= 25009, `port ${now.port}`);
    }
    for (const route of routes.slice(0, 3)) {
      const now = await read(route.id);
      assert.equal(now.worker_id, narrowed.id);
      assert.equal(now.port, route.port);
    }
  });

  test('routes that fit nowhere read unavailable until a worker fits', async () => {
    const changed = await registerWorker(coordinator, 'changed', { port_range: [26000, 26003] });
    const routes = await createOn(changed.id, 2, 'mode');

    await registerWorker(coordinator, 'changed', {
      frontend_mode: 'wildcard',
      port_range: undefined,
      wildcard_domain: '.changed.example.test',
    });
    for (const route of routes) {
      const now = await read(route.id);
      assert.equal(now.worker_id, changed.id);
      assert.equal(now.status, 'unavailable');
    }
    const metrics = await fetch(`${coordinator.url}/metrics`, {
      headers: { authorization: `Bearer ${coordinator.tokens.manager}` },
    });
    assert.match(await metrics.text(), /appproxy_routes\{status="unavailable"\} 2/);

    const fitting = await registerWorker(coordinator, 'fitting', { port_range: [27000, 27009] });
    for (const route of routes) {
      const now = await read(route.id);
      assert.equal(now.worker_id, fitting.id);
      assert.notEqual(now.status, 'unavailable');
    }
  });
});

describe('instances of stopped worker processes', { skip }, () => {
  let coordinator: TestCoordinator;

  // A short lost deadline (3 × 200 ms), so an instance goes stale within the test.
  before(async () => {
    coordinator = await startTestCoordinator({ APPPROXY_HEARTBEAT_INTERVAL_MS: '200' });
  });
  after(() => coordinator?.stop());

  test('a registration drops instances silent past the deadline', async () => {
    const first = await registerWorker(coordinator, 'restarted', { instance_id: 'run-1' });
    await registerWorker(coordinator, 'restarted', { instance_id: 'run-2' });
    const both = (await coordinator.api('GET', `/workers/${first.id}`)).body;
    assert.deepEqual(both.instances.map((i: any) => i.instance_id), ['run-1', 'run-2']);

    await new Promise((resolve) => setTimeout(resolve, 800));
    await registerWorker(coordinator, 'restarted', { instance_id: 'run-3' });
    const now = (await coordinator.api('GET', `/workers/${first.id}`)).body;
    assert.deepEqual(now.instances.map((i: any) => i.instance_id), ['run-3']);
  });
});
