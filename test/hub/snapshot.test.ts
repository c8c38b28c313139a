import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { MAX_MESSAGE_BYTES } from '../../proto/index.ts';
import { RouteTable } from '../../src/worker/table.ts';
import { insertRoutes } from '../helpers/bulk-routes.ts';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import {
  assertTableMatchesRest,
  connectWorker,
  startSyncCoordinator,
  type SyncCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();
const ROUTE_COUNT = 20_000;

describe('large tables', { skip }, () => {
  let db: TestDatabase;
  let coordinator: SyncCoordinator;

  before(async () => {
    db = await createTestDatabase();
    coordinator = await startSyncCoordinator(db);
  });
  after(async () => {
    await coordinator?.close();
    await db?.drop();
  });

  test('snapshot of 20,000 routes streams in bounded chunks', { timeout: 120_000 }, async () => {
    const worker = coordinator.newWorker({ authority: 'large-a', portRange: [10000, 59999] });
    await worker.register();
    await insertRoutes(db.url as string, bulkWorker(worker.id, 10000), ROUTE_COUNT);

    await worker.connect();
    await worker.waitFor(() => worker.table.size === ROUTE_COUNT, 60_000, 'whole table');
    const chunks = worker.messages.filter((message) => message.type === 'snapshot');
    assert.ok(chunks.length > 1, `${chunks.length} snapshot messages`);
    for (const [i, chunk] of chunks.entries()) {
      assert.ok(Buffer.byteLength(JSON.stringify(chunk)) < MAX_MESSAGE_BYTES, `chunk ${i} size`);
      assert.equal(chunk.more, i < chunks.length - 1 ? true : undefined, `more flag of chunk ${i}`);
      assert.equal(chunk.revision, chunks[0].revision);
      assert.equal(chunk.digest, chunks[0].digest);
    }
    const total = chunks.reduce((sum, chunk) => sum + chunk.routes.length, 0);
    assert.equal(total, ROUTE_COUNT);
    await assertTableMatchesRest(coordinator.api, worker);

    // The reference worker's table keeps serving the old routes until the last chunk.
    const table = new RouteTable();
    const small = { epoch: chunks[0].epoch, revision: 1, routes: [], digest: '0'.repeat(32) };
    assert.equal(table.applySnapshot(small).status, 'applied');
    for (const chunk of chunks.slice(0, -1)) {
      assert.equal(table.applySnapshot(chunk as never).status, 'partial');
      assert.equal(table.size, 0);
      assert.equal(table.revision, 1);
    }
    const result = table.applySnapshot(chunks.at(-1) as never);
    assert.equal(result.status, 'applied');
    assert.equal(table.size, ROUTE_COUNT);
    assert.equal(table.digest, chunks[0].digest);
    await worker.close();
  });

  test('snapshot routes equal the routes REST returns', async () => {
    const worker = coordinator.newWorker({ authority: 'large-c', portRange: [20000, 20099] });
    await worker.register({ labels: { zone: 'north' } });
    const bodies = [
      {
        session_id: 'plain',
        service: 'lab',
        worker_id: worker.id,
        backends: [{ host: '192.0.2.1', port: 80 }],
      },
      {
        session_id: 'full',
        service: 'model',
        worker_id: worker.id,
        protocol: 'h2',
        mode: 'inference',
        backends: [{ host: 'backend.example.test', port: 8443, weight: 2.5 }],
        open_to_public: true,
        allowed_client_ips: ['10.0.0.0/8', '2001:db8::/32'],
        labels: { team: 'ünïcødé "quoted" \\ back', owner: 'emoji 🚀 and a/slash' },
        worker_selector: { zone: 'north' },
        idle_timeout_s: 600,
      },
    ];
    for (const body of bodies) {
      assert.equal((await coordinator.api('POST', '/routes', body)).status, 201);
    }
    const rest = await coordinator.api('GET', `/routes?worker_id=${worker.id}`);
    await worker.connect();
    await worker.waitFor(() => worker.table.size === 2, 5000, 'snapshot');
    const snapshot = worker.messages.find((message) => message.type === 'snapshot');
    const byId = (a: any, b: any) => (a.id < b.id ? -1 : 1);
    assert.deepEqual([...snapshot?.routes].sort(byId), [...rest.body.routes].sort(byId));
    await worker.close();
  });

  test('a burst larger than a message arrives as chained diffs', { timeout: 120_000 }, async () => {
    const worker = await connectWorker(coordinator, {
      authority: 'large-b',
      portRange: [10000, 59999],
    });
    const from = worker.revision;
    worker.messages.length = 0;
    // One transaction of 5,000 routes, about 3 MB of route JSON.
    await insertRoutes(db.url as string, bulkWorker(worker.id, 10000), 5000);
    await worker.waitFor(() => worker.table.size === 5000, 30_000, 'whole burst');

    const diffs = worker.messages.filter((message) => message.type === 'diff');
    assert.equal(diffs.length, worker.messages.length, 'only diffs arrive');
    assert.ok(diffs.length > 1, `${diffs.length} diffs`);
    let revision = from;
    for (const diff of diffs) {
      assert.equal(diff.from_revision, revision);
      assert.ok(diff.revision > diff.from_revision);
      assert.ok(Buffer.byteLength(JSON.stringify(diff)) < MAX_MESSAGE_BYTES);
      revision = diff.revision;
    }
    await assertTableMatchesRest(coordinator.api, worker);
    await worker.close();
  });
});

function bulkWorker(id: string, firstPort: number) {
  return { id, frontendMode: 'port' as const, hostname: 'proxy-a.example.test', firstPort };
}
