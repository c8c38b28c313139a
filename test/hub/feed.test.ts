import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { ChangeFeed } from '../../src/hub/feed.ts';
import { openDatabase, type Database } from '../../src/store/database.ts';
import { migrate } from '../../src/store/migrate.ts';
import { Writer, type ChangeRecord } from '../../src/store/writer.ts';
import {
  createTestDatabase,
  isEmbeddedRun,
  postgresSkipReason,
  type TestDatabase,
} from '../helpers/database.ts';

const skip = isEmbeddedRun ? undefined : await postgresSkipReason();

describe('change feed', { skip }, () => {
  let testDb: TestDatabase;
  let db: Database;

  before(async () => {
    testDb = await createTestDatabase();
    db = await openDatabase({
      databaseUrl: testDb.url,
      dataDir: testDb.dataDir,
      poolSize: 4,
      connectTimeoutS: 2,
      statementTimeoutMs: 10_000,
    });
    await migrate(db.sql);
  });

  after(async () => {
    await db?.close();
    await testDb?.drop();
  });

  test('feed delivers once when a fetch races a publish', async () => {
    const logLines: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void logLines.push(line) });
    const feed = new ChangeFeed(db.sql, log, { pollIntervalMs: 60_000, supportsListen: false });
    await feed.start();
    const delivered: number[] = [];
    feed.subscribe((changes) => delivered.push(...changes.map((change) => change.revision)));

    // Commit without publishing, so the test decides when publish() runs.
    let committed: ChangeRecord[] = [];
    const writer = new Writer(db.sql, {
      maxBatch: 10,
      timeoutMs: 5000,
      onCommit: (changes) => (committed = changes),
    });
    await writer.run(async (tx) => void tx.record({ type: 'worker.deregistered' }));
    const revision = committed[0].revision;

    // The fetch's query is in flight when the writer's commit arrives through publish().
    feed.wake();
    feed.publish(committed);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await feed.stop();

    assert.deepEqual(delivered, [revision]);
    assert.equal(feed.revision, revision);
    assert.deepEqual(logLines, []);
  });

  test('feed reads back only foreign and failed commits', async () => {
    const log = pino({ level: 'silent' });
    let reads = 0;
    // Counts change-log reads: the feed reads the log only through `unsafe`.
    const counted = new Proxy(db.sql, {
      get(target, key) {
        const value = Reflect.get(target, key);
        if (key === 'unsafe') {
          return (...args: unknown[]) => {
            reads += 1;
            return (value as (...a: unknown[]) => unknown).apply(target, args);
          };
        }
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const feed = new ChangeFeed(counted, log, { pollIntervalMs: 60_000, supportsListen: true });
    await feed.start();
    const delivered: number[] = [];
    feed.subscribe((changes) => delivered.push(...changes.map((change) => change.revision)));
    const writer = new Writer(db.sql, {
      maxBatch: 10,
      timeoutMs: 5000,
      onCommit: (changes) => feed.publish(changes),
      onCommitting: (revision) => feed.expect(revision),
      onCommitFailed: () => feed.expectFailed(),
    });
    const settle = () => new Promise((resolve) => setTimeout(resolve, 300));

    for (let i = 0; i < 20; i++) await writer.run(async (tx) => void tx.record({ type: 'worker.deregistered' }));
    await settle();
    assert.equal(reads, 0, 'own commits were read back');
    assert.equal(delivered.length, 20);

    // Another coordinator's commit arrives only as a notification.
    const other = new Writer(db.sql, { maxBatch: 10, timeoutMs: 5000, onCommit: () => {} });
    await other.run(async (tx) => void tx.record({ type: 'worker.deregistered' }));
    await settle();
    assert.ok(reads >= 1, 'a commit of another writer was not read');
    assert.equal(delivered.length, 21);

    // A commit that fails after announcing itself makes the feed read the log.
    const readsBefore = reads;
    const failed = writer.run(async (tx) => {
      tx.record({ type: 'worker.deregistered' });
      tx.send(tx.sql`SELECT no_such_column FROM meta`.execute());
    });
    await assert.rejects(failed);
    await settle();
    assert.ok(reads > readsBefore, 'a failed commit did not lead to a read');
    assert.equal(delivered.length, 21);
    await feed.stop();
  });
});
