import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { insertRoutes } from '../helpers/bulk-routes.ts';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import {
  assertTableMatchesRest,
  connectWorker,
  eventually,
  routeBody,
  startSyncCoordinator,
  type SyncCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

describe('bursts and lone changes', { skip }, () => {
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

  test('changes committed together arrive as one diff', async () => {
    const worker = await connectWorker(coordinator, {
      authority: 'burst-a',
      portRange: [20000, 20999],
    });
    const ids: string[] = [];
    for (const service of ['lab', 'shell', 'board', 'code', 'model']) {
      const body = routeBody(worker.id, 'burst', service);
      const created = await coordinator.api('POST', '/routes', body);
      ids.push(created.body.id);
    }
    await worker.waitFor(() => ids.every((id) => worker.table.has(id)), 5000, 'routes');
    worker.messages.length = 0;

    const removed = await coordinator.api('DELETE', '/sessions/burst/routes');
    assert.equal(removed.body.deleted, 5);
    await worker.waitFor(() => worker.table.size === 0, 5000, 'empty table');
    assert.equal(worker.messages.length, 1);
    assert.deepEqual([...worker.messages[0].removes].sort(), [...ids].sort());

    worker.messages.length = 0;
    const firstPort = 20100;
    const bulk = { id: worker.id, frontendMode: 'port' as const, hostname: 'h', firstPort };
    await insertRoutes(db.url as string, bulk, 50);
    await worker.waitFor(() => worker.table.size === 50, 5000, 'bulk routes');
    assert.equal(worker.messages.length, 1);
    assert.equal(worker.messages[0].upserts.length, 50);
    await assertTableMatchesRest(coordinator.api, worker);
    await worker.close();
  });

  test('lone change goes out without waiting for company', async () => {
    const worker = await connectWorker(coordinator, {
      authority: 'burst-b',
      portRange: [21000, 21999],
    });
    for (let i = 0; i < 5; i++) {
      worker.messages.length = 0;
      const created = await coordinator.api('POST', '/routes', routeBody(worker.id, `lone-${i}`));
      const answeredAt = Date.now();
      await worker.waitFor(() => worker.table.has(created.body.id), 250, 'the lone change');
      assert.ok(Date.now() - answeredAt < 250);
      assert.equal(worker.messages.length, 1);
      assert.deepEqual(worker.messages[0].upserts.map((route: any) => route.id), [created.body.id]);
      assert.equal(worker.messages[0].revision, created.body.revision);
    }
    await worker.close();
  });
});

describe('slow workers', { skip }, () => {
  let db: TestDatabase;
  let coordinator: SyncCoordinator;

  before(async () => {
    db = await createTestDatabase();
    coordinator = await startSyncCoordinator(db, { APPPROXY_SESSION_SEND_TIMEOUT_MS: '1000' });
  });
  after(async () => {
    await coordinator?.close();
    await db?.drop();
  });

  test('worker that stops reading is closed and resumes', { timeout: 120_000 }, async () => {
    const slow = await connectWorker(coordinator, {
      authority: 'slow-a',
      portRange: [10000, 59999],
    });
    const other = await connectWorker(coordinator, {
      authority: 'slow-b',
      portRange: [20000, 20999],
    });
    slow.freeze();
    // About 12 MB of diffs: more than the socket buffers of both ends and the high-water mark.
    const bulk = { id: slow.id, frontendMode: 'port' as const, hostname: 'h', firstPort: 10000 };
    await insertRoutes(db.url as string, bulk, 20_000);

    const startedAt = Date.now();
    const created = await coordinator.api('POST', '/routes', routeBody(other.id, 'meanwhile'));
    await other.waitFor(() => other.table.has(created.body.id), 1000, 'diff of the other worker');
    assert.ok(Date.now() - startedAt < 1000);

    await eventually('slow session closed', 15_000, async () => {
      const state = await coordinator.api('GET', `/workers/${slow.id}`);
      return state.body.connected === false ? true : undefined;
    });
    const line = coordinator.logs.find((entry) => entry.msg?.startsWith('worker reads too slowly'));
    assert.equal(line?.worker_id, slow.id);

    slow.thaw();
    await slow.waitFor(() => slow.closeCode !== null, 30_000, 'close frame behind the backlog');
    assert.equal(slow.closeCode, 4429);
    const closing = [...slow.messages].reverse().find((message) => message.type === 'error');
    assert.equal(closing?.code, '4429');

    slow.messages.length = 0;
    await slow.connect(true);
    await slow.waitFor(() => slow.table.size === 20_000, 60_000, 'table after resume');
    await assertTableMatchesRest(coordinator.api, slow);
    await slow.close();
    await other.close();
  });
});
