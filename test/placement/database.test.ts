import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { registerWorker, resetState, routeBody } from '../services/helpers.ts';

const skip = await postgresSkipReason();

// Workers here register over REST and never heartbeat, so the interval is long enough
// that none is declared lost while a test runs.
describe('placement on the database', { skip }, () => {
  let coordinator: TestCoordinator;

  before(async () => {
    coordinator = await startTestCoordinator({ APPPROXY_HEARTBEAT_INTERVAL_MS: '60000' });
  });
  after(() => coordinator?.stop());
  afterEach(() => resetState(coordinator));

  const create = (body: unknown) => coordinator.api('POST', '/routes', body);

  test('least loaded worker takes the next route', async () => {
    const a = await registerWorker(coordinator, 'load-a', { port_range: [20000, 20099] });
    const b = await registerWorker(coordinator, 'load-b', { port_range: [21000, 21099] });
    const placed: string[] = [];
    for (let i = 0; i < 4; i++) {
      const response = await create(routeBody(`load-${i}`, 'web'));
      assert.equal(response.status, 201);
      placed.push(response.body.worker_id);
    }
    assert.deepEqual(placed, [a.id, b.id, a.id, b.id]);
  });

  test('lowest free port of the range', async () => {
    const worker = await registerWorker(coordinator, 'ports', { port_range: [22000, 22009] });
    const first = await create(routeBody('ports-1', 'web'));
    const second = await create(routeBody('ports-2', 'web'));
    assert.equal(first.body.port, 22000);
    assert.equal(second.body.port, 22001);
    await coordinator.api('DELETE', `/routes/${first.body.id}`);
    const third = await create(routeBody('ports-3', 'web'));
    assert.equal(third.body.port, 22000);
    assert.equal(third.body.url, `http://ports.example.test:22000`);
    assert.equal(third.body.worker_id, worker.id);
  });

  test('tcp goes only to a port-mode worker with tcp', async () => {
    await registerWorker(coordinator, 'http-only', { port_range: [20000, 20009] });
    const refused = await create(routeBody('tcp-1', 'ssh', { protocol: 'tcp' }));
    assert.equal(refused.status, 503);
    assert.match(refused.body.detail, /without tcp in port mode/);

    const tcp = await registerWorker(coordinator, 'with-tcp', {
      port_range: [23000, 23009],
      protocols: ['http', 'tcp'],
    });
    const created = await create(routeBody('tcp-1', 'ssh', { protocol: 'tcp' }));
    assert.equal(created.status, 201);
    assert.equal(created.body.worker_id, tcp.id);
    assert.equal(created.body.url, 'tcp://with-tcp.example.test:23000');
  });

  test('http-based protocols skip tcp-only workers', async () => {
    await registerWorker(coordinator, 'tcp-only', { protocols: ['tcp'] });
    const refused = await create(routeBody('grpc-1', 'model', { protocol: 'grpc' }));
    assert.equal(refused.status, 503);
    assert.match(refused.body.detail, /without protocol http \(needed by grpc\)/);
  });

  test('full worker by capacity is skipped', async () => {
    const small = await registerWorker(coordinator, 'small', {
      capacity: 1,
      port_range: [20000, 20009],
    });
    const first = await create(routeBody('cap-1', 'web'));
    assert.equal(first.body.worker_id, small.id);
    const refused = await create(routeBody('cap-2', 'web'));
    assert.equal(refused.status, 503);
    assert.match(refused.body.detail, /1 full \(capacity reached or no free port\)/);
  });

  test('full port range is skipped', async () => {
    const narrow = await registerWorker(coordinator, 'narrow', { port_range: [24000, 24000] });
    const wide = await registerWorker(coordinator, 'wide', { port_range: [25000, 25009] });
    // Load the wide worker first so the narrow one is the less loaded.
    await create(routeBody('range-0', 'web', { worker_id: wide.id }));
    await create(routeBody('range-00', 'web', { worker_id: wide.id }));
    const first = await create(routeBody('range-1', 'web'));
    const second = await create(routeBody('range-2', 'web'));
    assert.equal(first.body.worker_id, narrow.id);
    assert.equal(second.body.worker_id, wide.id);
  });

  test('no live worker is a 503 that says so', async () => {
    const response = await create(routeBody('none-1', 'web'));
    assert.equal(response.status, 503);
    assert.match(response.body.detail, /No worker is alive/);
  });

  test('worker_id pins the route', async () => {
    await registerWorker(coordinator, 'pin-a', { port_range: [20000, 20009] });
    const b = await registerWorker(coordinator, 'pin-b', { port_range: [21000, 21009] });
    await create(routeBody('pin-0', 'web', { worker_id: b.id }));
    const pinned = await create(routeBody('pin-1', 'web', { worker_id: b.id }));
    assert.equal(pinned.status, 201);
    assert.equal(pinned.body.worker_id, b.id);
  });

  test('taken port on a full worker is a 409', async () => {
    const worker = await registerWorker(coordinator, 'full-port', { port_range: [28000, 28001] });
    const winner = await create(routeBody('full-1', 'web', { worker_id: worker.id, port: 28000 }));
    await create(routeBody('full-2', 'web', { worker_id: worker.id }));
    const loser = await create(routeBody('full-3', 'web', { worker_id: worker.id, port: 28000 }));
    assert.equal(loser.status, 409);
    assert.equal(loser.body.conflicting_route_id, winner.body.id);
    const elsewhere = await create(routeBody('full-4', 'web', { worker_id: worker.id }));
    assert.equal(elsewhere.status, 503);
  });

  test('worker_id of a draining worker is a 503', async () => {
    const worker = await registerWorker(coordinator, 'pin-drain');
    const drained = await coordinator.api('POST', `/workers/${worker.id}/drain`);
    assert.equal(drained.status, 200);
    const refused = await create(routeBody('pin-drain-1', 'web', { worker_id: worker.id }));
    assert.equal(refused.status, 503);
    assert.equal(refused.body.detail, 'Worker pin-drain is draining; it takes no new routes.');
  });

  test('worker_id of no worker is a 400', async () => {
    await registerWorker(coordinator, 'pin-known');
    const unknown = '0b6f7a52-9d6e-4b39-9b8b-5c0d3f1e2a77';
    const refused = await create(routeBody('pin-unknown', 'web', { worker_id: unknown }));
    assert.equal(refused.status, 400);
    assert.match(refused.body.detail, /names no registered worker/);
  });

  test('worker_selector picks matching labels', async () => {
    await registerWorker(coordinator, 'sel-cpu', { labels: { gpu: 'none' } });
    const gpu = await registerWorker(coordinator, 'sel-gpu', {
      labels: { gpu: 'a100', zone: 'b' },
      port_range: [21000, 21009],
    });
    for (let i = 0; i < 3; i++) {
      const body = routeBody(`sel-${i}`, 'model', { worker_selector: { gpu: 'a100' } });
      const created = await create(body);
      assert.equal(created.status, 201);
      assert.equal(created.body.worker_id, gpu.id);
      assert.deepEqual(created.body.worker_selector, { gpu: 'a100' });
    }
  });

  test('worker_selector with no match is a 503 naming it', async () => {
    await registerWorker(coordinator, 'sel-none', { labels: { gpu: 'none' } });
    const refused = await create(routeBody('sel-x', 'model', { worker_selector: { gpu: 'h100' } }));
    assert.equal(refused.status, 503);
    assert.match(refused.body.detail, /not matching worker_selector \{"gpu":"h100"\}/);
  });

  test('route without selector has no selector field', async () => {
    await registerWorker(coordinator, 'sel-absent');
    const created = await create(routeBody('sel-absent', 'web'));
    assert.equal('worker_selector' in created.body, false);
    assert.equal('idle_timeout_s' in created.body, false);
  });

  test('requested port outside every range is a 503', async () => {
    await registerWorker(coordinator, 'range-only', { port_range: [20000, 20009] });
    const refused = await create(routeBody('far-port', 'web', { port: 30000 }));
    assert.equal(refused.status, 503);
    assert.match(refused.body.detail, /without port 30000 in its port range/);
  });

  test('port and subdomain together are a 400', async () => {
    const refused = await create(routeBody('both', 'web', { port: 20000, subdomain: 'both' }));
    assert.equal(refused.status, 400);
    assert.equal(refused.body.issues[0].path, 'subdomain');
  });
});
