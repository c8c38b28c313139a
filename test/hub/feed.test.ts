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
});
