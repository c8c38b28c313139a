import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import { startCoordinatorProcess, type CoordinatorProcess } from '../helpers/processes.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

const skip = await postgresSkipReason();

describe('coordinator presence', { skip }, () => {
  let db: TestDatabase;
  let first: CoordinatorProcess;
  let second: CoordinatorProcess;
  let secondDataDir: string;

  before(async () => {
    db = await createTestDatabase();
    secondDataDir = await mkdtemp(path.join(tmpdir(), 'appproxy-second-'));
    first = await startCoordinatorProcess({ databaseUrl: db.url, dataDir: db.dataDir });
    second = await startCoordinatorProcess({ databaseUrl: db.url, dataDir: secondDataDir });
  });
  after(async () => {
    first?.child.kill('SIGKILL');
    await second?.stop();
    await rm(secondDataDir, { recursive: true, force: true });
    await db?.drop();
  });

  test('sessions of a killed coordinator are released', async () => {
    const tokens = await first.tokens();
    const worker = new ScriptedWorker({ coordinatorUrl: first.url, workerToken: tokens.worker, heartbeats: false });
    await worker.register();
    await worker.connect();
    await worker.waitFor(() => worker.messages.length > 0, 5000, 'snapshot');
    const read = async () => {
      const response = await fetch(`${second.url}/workers/${worker.id}`, {
        headers: { authorization: `Bearer ${tokens.read}` },
      });
      return response.json();
    };
    assert.equal((await read()).connected, true);

    first.child.kill('SIGKILL');
    const deadline = Date.now() + 25_000;
    while ((await read()).connected) {
      assert.ok(Date.now() < deadline, 'session still counted as connected');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const events = await fetch(`${second.url}/events?limit=1000`, {
      headers: { authorization: `Bearer ${tokens.read}` },
    }).then((response) => response.json());
    const released = events.events.filter(
      (event: any) => event.type === 'worker.disconnected' && event.reason === 'coordinator_gone',
    );
    assert.equal(released.length, 1);
  });
});
