import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import * as v from 'valibot';
import {
  CreateRouteBodySchema,
  RegisterWorkerBodySchema,
  tableDigest,
} from '../../proto/index.ts';
import { CompactedError, NotFoundError } from '../../src/errors.ts';
import { EventService } from '../../src/services/events.ts';
import { RouteService } from '../../src/services/routes.ts';
import { WorkerService } from '../../src/services/workers.ts';
import { compactChanges, readMeta, readTableDigest } from '../../src/store/changes.ts';
import { openDatabase, type Database } from '../../src/store/database.ts';
import { migrate } from '../../src/store/migrate.ts';
import { Writer, wireText, type ChangeRecord } from '../../src/store/writer.ts';
import {
  createTestDatabase,
  isEmbeddedRun,
  postgresSkipReason,
  type TestDatabase,
} from '../helpers/database.ts';

const skip = isEmbeddedRun ? undefined : await postgresSkipReason();

describe('group-commit writer', { skip }, () => {
  let testDb: TestDatabase;
  let db: Database;
  let writer: Writer;
  let routes: RouteService;
  let workers: WorkerService;
  const committed: ChangeRecord[][] = [];
  const workerIds: string[] = [];

  before(async () => {
    testDb = await createTestDatabase();
    db = await openDatabase({
      databaseUrl: testDb.url,
      dataDir: testDb.dataDir,
      poolSize: 4,
      connectTimeoutS: 2,
      statementTimeoutMs: 30_000,
    });
    await migrate(db.sql);
    writer = new Writer(db.sql, {
      maxBatch: 100,
      timeoutMs: 30_000,
      onCommit: (changes) => committed.push(changes),
    });
    routes = new RouteService(db.sql, writer);
    workers = new WorkerService(db.sql, writer, { intervalMs: 5000, misses: 3 });
    for (const authority of ['store-a', 'store-b']) {
      const body = v.parse(RegisterWorkerBodySchema, {
        authority,
        frontend_mode: 'port',
        hostname: `${authority}.example.test`,
        port_range: [20000, 29999],
      });
      workerIds.push((await workers.register(body)).response.worker.id);
    }
  });
  after(async () => {
    await db?.close();
    await testDb?.drop();
  });

  function createBody(sessionId: string, workerId = workerIds[0]) {
    return v.parse(CreateRouteBodySchema, {
      session_id: sessionId,
      service: 'jupyter',
      worker_id: workerId,
      backends: [{ host: '192.0.2.10', port: 8888 }],
    });
  }

  async function assertStoredDigests(): Promise<void> {
    for (const id of workerIds) {
      const rows = await db.sql`SELECT id, revision FROM routes WHERE worker_id = ${id}`;
      const versions = rows.map((row) => ({ id: String(row.id), revision: Number(row.revision) }));
      const computed = tableDigest(versions);
      assert.equal(await readTableDigest(db.sql, id), computed, `digest of worker ${id}`);
    }
  }

  test('concurrent writes share transactions and get consecutive revisions', async () => {
    committed.length = 0;
    const before = (await readMeta(db.sql)).revision;
    const results = await Promise.all(
      Array.from({ length: 60 }, (_, i) => routes.create(createBody(`group-${i}`))),
    );
    assert.equal(results.length, 60);
    assert.ok(committed.length < 60, `${committed.length} transactions for 60 writes`);
    const revisions = committed.flat().map((change) => change.revision);
    assert.deepEqual(revisions, Array.from({ length: 60 }, (_, i) => before + 1 + i));
    const stored = await db.sql`
      SELECT revision FROM changes WHERE revision > ${before} ORDER BY revision`;
    assert.deepEqual(stored.map((row) => Number(row.revision)), revisions);
    assert.equal((await readMeta(db.sql)).revision, before + 60);
  });

  test('a write that fails before writing leaves the others committed', async () => {
    const outcomes = await Promise.allSettled([
      routes.create(createBody('clean-1')),
      routes.patch('00000000-0000-4000-8000-000000000000', { labels: { a: 'b' } }),
      routes.create(createBody('clean-2')),
    ]);
    assert.equal(outcomes[0].status, 'fulfilled');
    assert.equal(outcomes[2].status, 'fulfilled');
    assert.equal(outcomes[1].status, 'rejected');
    assert.ok((outcomes[1] as PromiseRejectedResult).reason instanceof NotFoundError);
  });

  test('a write that breaks the transaction fails alone', async () => {
    const before = (await readMeta(db.sql)).revision;
    const broken = writer.run(async (tx) => {
      await tx.sql`SELECT no_such_column FROM routes`;
    });
    const outcomes = await Promise.allSettled([
      routes.create(createBody('beside-1')),
      broken,
      routes.create(createBody('beside-2')),
    ]);
    assert.equal(outcomes[0].status, 'fulfilled');
    assert.equal(outcomes[1].status, 'rejected');
    assert.equal(outcomes[2].status, 'fulfilled');
    assert.equal((await readMeta(db.sql)).revision, before + 2);
  });

  test('failed sent statement fails its job alone', async () => {
    const before = (await readMeta(db.sql)).revision;
    const broken = writer.run(async (tx) => {
      // The failure is only seen with the COMMIT the write travelled with.
      tx.send(tx.sql`SELECT 1 / 0`.execute());
      tx.record({ type: 'worker.deregistered' });
    });
    const outcomes = await Promise.allSettled([
      routes.create(createBody('sent-1')),
      broken,
      routes.create(createBody('sent-2')),
    ]);
    assert.equal(outcomes[0].status, 'fulfilled');
    assert.equal(outcomes[1].status, 'rejected');
    assert.equal(outcomes[2].status, 'fulfilled');
    assert.equal((await readMeta(db.sql)).revision, before + 2);
  });

  test('creates store each route JSON', async () => {
    const alone = await routes.create(createBody('wire-alone'));
    const together = await Promise.all(
      Array.from({ length: 5 }, (_, i) => routes.create(createBody(`wire-batch-${i}`))),
    );
    for (const { route } of [alone, ...together]) {
      const [row] = await db.sql`SELECT wire FROM routes WHERE id = ${route.id}`;
      assert.equal(row.wire, wireText(route), `stored JSON of ${route.session_id}`);
    }
  });

  test('stored table digests follow creates, patches, moves and deletes', async () => {
    const created = await Promise.all(
      Array.from({ length: 20 }, (_, i) => routes.create(createBody(`digest-${i}`))),
    );
    await assertStoredDigests();
    await Promise.all(
      created.slice(0, 10).map(({ route }) =>
        routes.patch(route.id, { backends: [{ host: '192.0.2.30', port: 9000, weight: 1 }] }),
      ),
    );
    await routes.remove(created[10].route.id);
    await routes.removeSession('digest-11');
    await assertStoredDigests();

    await workers.deregister(workerIds[0]);
    const moved = await workers.failOver();
    assert.ok(moved.length > 0, 'routes moved to the other worker');
    await assertStoredDigests();
    const [onFirst] = await db.sql`
      SELECT count(*) AS count FROM routes WHERE worker_id = ${workerIds[0]}`;
    assert.equal(Number(onFirst.count), 0);
  });

  test('digest migration matches the digest of the routes', async () => {
    const file = new URL('../../sql/006_worker_table_digest.sql', import.meta.url);
    const text = await readFile(file, 'utf8');
    const update = text.slice(text.indexOf('UPDATE workers'));
    await db.sql`UPDATE workers SET digest_high = 0, digest_low = 0`;
    await db.sql.unsafe(update);
    await assertStoredDigests();
  });

  test('compaction deletes old changes and raises the mark together', async () => {
    const meta = await readMeta(db.sql);
    const deleted = await compactChanges(db.sql, { maxAgeMs: 86_400_000, maxCount: 5 });
    assert.ok(deleted > 0);
    const after = await readMeta(db.sql);
    assert.equal(after.compactedThrough, meta.revision - 5);
    const [kept] = await db.sql`SELECT count(*) AS count, min(revision) AS oldest FROM changes`;
    assert.equal(Number(kept.count), 5);
    assert.equal(Number(kept.oldest), after.compactedThrough + 1);
    await assert.rejects(new EventService(db.sql).changesAfter(0, 10), CompactedError);
    assert.equal(await compactChanges(db.sql, { maxAgeMs: 86_400_000, maxCount: 5 }), 0);
  });
});
