import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  HEARTBEAT_MS,
  connectedWorker,
  currentRevision,
  eventsSince,
  routeBody,
  tableMessages,
  waitInSync,
} from './support.ts';

const skip = await postgresSkipReason();

const ROUTE_COUNT = 20_000;
/** About 300 bytes of labels per route, so the whole table is over 6 MB of JSON. */
const LABELS = {
  team: 'inference-platform-'.padEnd(100, 'x'),
  owner: 'research-group-'.padEnd(100, 'y'),
  purpose: 'notebook-'.padEnd(80, 'z'),
};

/** Runs `count` calls of `task(i)` with at most `limit` in flight. */
async function inParallel(limit: number, count: number, task: (i: number) => Promise<void>) {
  let next = 0;
  const lane = async () => {
    while (next < count) await task(next++);
  };
  await Promise.all(Array.from({ length: limit }, lane));
}

// A table far larger than one message reaches the worker whole, in several
// snapshot messages, without holding up other workers' updates.
describe('large snapshot', { skip }, () => {
  let coordinator: TestCoordinator;
  let big: ScriptedWorker;
  let small: ScriptedWorker;

  before(async () => {
    coordinator = await startTestCoordinator({ APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS) });
    big = await connectedWorker(coordinator, {
      authority: 'proxy-big',
      mode: 'wildcard',
      wildcardDomain: '.apps.example.test',
    });
    small = await connectedWorker(coordinator, { authority: 'proxy-small', portRange: [20000, 20099] });
    await inParallel(32, ROUTE_COUNT, async (i) => {
      const body = routeBody(`s${i}`, 'jupyter', '192.0.2.120:8888', { worker_id: big.id, labels: LABELS });
      const created = await coordinator.api('POST', '/routes', body);
      assert.equal(created.status, 201, JSON.stringify(created.body));
    });
    await waitInSync(coordinator.api, big.id, 30_000);
  });
  after(async () => {
    big?.kill();
    small?.kill();
    await coordinator?.stop();
  });

  test('a fresh session gets the whole table while other workers stay live', async () => {
    await big.close();
    const registration = await big.register();
    assert.equal(registration.routes.length, 1000);
    assert.equal(registration.routes_complete, false);
    const mark = big.messages.length;
    const startedAt = Date.now();
    await big.connect();

    const created = await coordinator.api(
      'POST',
      '/routes',
      routeBody('other', 'lab', '192.0.2.121:8080', { worker_id: small.id }),
    );
    assert.equal(created.status, 201);
    const createdAt = Date.now();
    await small.waitFor(() => small.table.has(created.body.id), 1000, "the other worker's diff");
    assert.ok(Date.now() - createdAt <= 1000);

    await big.waitFor(() => big.table.size === ROUTE_COUNT && tableMessages(big, mark).at(-1)?.more === undefined, 10_000, 'the whole table');
    assert.ok(Date.now() - startedAt <= 10_000);
    const parts = tableMessages(big, mark).filter((m) => m.type === 'snapshot');
    assert.ok(parts.length > 1, 'the table came in several messages');
    assert.ok(parts.every((part) => part.revision === parts[0].revision));
    assert.equal(big.digest, parts.at(-1)?.digest);
    await waitInSync(coordinator.api, big.id, 10_000);
    const worker = await coordinator.api('GET', `/workers/${big.id}`);
    assert.equal(worker.body.route_count, ROUTE_COUNT);
    assert.ok(worker.body.applied_revision >= worker.body.target_revision);
  });

  test('a body over 1 MiB is rejected with 413 and changes nothing', async () => {
    const before = await currentRevision(coordinator.api);
    const labels: Record<string, string> = {};
    for (let i = 0; i < 1100; i++) labels[`key-${i}`] = 'v'.repeat(1000);
    const response = await coordinator.api('POST', '/routes', routeBody('huge', 'jupyter', '192.0.2.122:8080', { labels }));
    assert.equal(response.status, 413);
    assert.equal(await currentRevision(coordinator.api), before);
    assert.deepEqual(await eventsSince(coordinator.api, before), []);
  });
});
