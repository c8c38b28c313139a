import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  createTestDatabase,
  isEmbeddedRun,
  postgresSkipReason,
  type TestDatabase,
} from '../helpers/database.ts';
import { startCoordinatorProcess, type CoordinatorProcess } from '../helpers/processes.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

const skip = isEmbeddedRun ? undefined : await postgresSkipReason();

/** The shutdown deadline of bin/appproxy-coordinator. */
const SHUTDOWN_LIMIT_MS = 10_000;

/** Waits until the process has written `text`; fails after 5 s. */
async function waitForOutput(process: CoordinatorProcess, text: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!process.output().includes(text)) {
    if (Date.now() > deadline) assert.fail(`no "${text}" in the output:\n${process.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('coordinator shutdown on SIGTERM', { skip }, () => {
  let db: TestDatabase;
  let coordinator: CoordinatorProcess;
  let worker: ScriptedWorker;

  before(async () => {
    db = await createTestDatabase();
    coordinator = await startCoordinatorProcess({ databaseUrl: db.url, dataDir: db.dataDir });
    const tokens = await coordinator.tokens();
    // Without acks the route stays pending, so a write that waits for it stays in flight.
    worker = new ScriptedWorker({
      coordinatorUrl: coordinator.url,
      workerToken: tokens.worker,
      autoAck: false,
    });
    await worker.register();
    await worker.connect();
    await worker.waitFor(() => worker.epoch !== '', 5000, 'the snapshot');
  });

  after(async () => {
    worker?.kill();
    coordinator?.child.kill('SIGKILL');
    await db?.drop();
  });

  test('drains requests, closes sessions with 1012, exits 0', async () => {
    const tokens = await coordinator.tokens();
    const inFlight = fetch(`${coordinator.url}/routes?wait=applied&timeout_ms=2000`, {
      method: 'POST',
      headers: { authorization: `Bearer ${tokens.manager}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        session_id: 'shutdown-session',
        service: 'web',
        backends: [{ host: '127.0.0.1', port: 8080 }],
      }),
    });
    await worker.waitFor(() => worker.messages.some((m) => m.type === 'diff'), 5000, 'the diff');

    const stoppedAt = Date.now();
    const exitCode = coordinator.stop();
    await waitForOutput(coordinator, 'shutdown requested');
    const isRefused = await fetch(`${coordinator.url}/health`).then(() => false, () => true);
    assert.ok(isRefused, 'a new request was accepted during shutdown');

    // The write committed before the signal; the wait for acks ends with 202, not a reset.
    const response = await inFlight;
    assert.equal(response.status, 202);
    assert.equal((await response.json()).session_id, 'shutdown-session');
    await worker.waitFor(() => worker.closeCode !== null, 5000, 'the session close');
    assert.equal(worker.closeCode, 1012);

    assert.equal(await exitCode, 0, coordinator.output());
    const elapsedMs = Date.now() - stoppedAt;
    assert.ok(elapsedMs < SHUTDOWN_LIMIT_MS, `exit took ${elapsedMs} ms`);
  });

  test('logs stop without errors', () => {
    const lines = coordinator.output().trim().split('\n').map((line) => JSON.parse(line));
    const messages = lines.map((line) => line.msg);
    assert.ok(messages.includes('shutdown requested'));
    assert.ok(messages.includes('coordinator stopped'));
    const problems = lines.filter((line) => line.level >= 40);
    assert.deepEqual(problems, []);
  });
});
