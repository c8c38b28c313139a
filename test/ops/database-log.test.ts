import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import postgres from 'postgres';
import { watchDatabaseConnections } from '../../src/coordinator/database-log.ts';
import { openDatabase, type Database } from '../../src/store/database.ts';
import {
  createTestDatabase,
  isEmbeddedRun,
  postgresSkipReason,
  type TestDatabase,
} from '../helpers/database.ts';

const skip = isEmbeddedRun ? 'terminating backends needs PostgreSQL' : await postgresSkipReason();

describe('database connection log', { skip }, () => {
  let testDb: TestDatabase;
  let db: Database;

  before(async () => {
    testDb = await createTestDatabase();
    db = await openDatabase({
      databaseUrl: testDb.url,
      dataDir: testDb.dataDir,
      poolSize: 2,
      connectTimeoutS: 2,
      statementTimeoutMs: 10_000,
    });
  });

  after(async () => {
    await db?.close();
    await testDb?.drop();
  });

  test('logs a dropped connection once and its return', async () => {
    const lines: Array<{ level: number; msg: string; down_ms?: number }> = [];
    const destination = { write: (line: string) => void lines.push(JSON.parse(line)) };
    const log = pino({ level: 'info' }, destination);
    const stop = watchDatabaseConnections(db.sql, log);
    try {
      await Promise.all([db.sql`SELECT pg_sleep(0.05)`, db.sql`SELECT pg_sleep(0.05)`]);
      await terminateBackends(testDb.url as string);
      await retry(() => db.sql`SELECT 1`);
    } finally {
      stop();
    }
    const messages = lines.map((line) => line.msg);
    assert.deepEqual(messages, [
      'database closed a connection; reconnecting',
      'database connection open again',
    ]);
    assert.equal(lines[0].level, 40);
    assert.equal(typeof lines[1].down_ms, 'number');
  });
});

/** Ends every other session on the test database, as a database restart would. */
async function terminateBackends(url: string): Promise<void> {
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  try {
    await admin`
      SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = current_database() AND pid <> pg_backend_pid()`;
  } finally {
    await admin.end();
  }
}

/** Runs `query` until it succeeds, for at most 5 s; the first try may meet a dead connection. */
async function retry(query: () => Promise<unknown>): Promise<void> {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      await query();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}
