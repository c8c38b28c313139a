import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  connectWorker,
  eventually,
  routeBody,
  startSyncCoordinator,
  type SyncCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();
const SESSIONS = 1000;

/** Runs `task` over `items`, at most `limit` at a time. */
async function inBatches<T>(
  items: T[],
  limit: number,
  task: (item: T) => Promise<void>,
): Promise<void> {
  for (let start = 0; start < items.length; start += limit) {
    await Promise.all(items.slice(start, start + limit).map(task));
  }
}

describe('reconnect storm', { skip }, () => {
  let db: TestDatabase;
  let coordinator: SyncCoordinator;
  let live: ScriptedWorker;
  const storm: ScriptedWorker[] = [];

  before(async () => {
    db = await createTestDatabase();
    coordinator = await startSyncCoordinator(db, {
      APPPROXY_HEARTBEAT_INTERVAL_MS: '10000',
      APPPROXY_SESSION_ADMISSION_CONCURRENCY: '4',
    });
    live = await connectWorker(coordinator, { authority: 'storm-live', portRange: [30000, 30999] });
    for (let i = 0; i < SESSIONS; i++) {
      const port = 31000 + i * 10;
      storm.push(coordinator.newWorker({ authority: `storm-${i}`, portRange: [port, port + 9] }));
    }
    await inBatches(storm, 50, (worker) => worker.register());
  });
  after(async () => {
    await inBatches(storm, 200, (worker) => worker.close());
    await live?.close();
    await coordinator?.close();
    await db?.drop();
  });

  /** Opens every storm session at once, checking meanwhile that the live session is served. */
  async function connectAll(resume: boolean): Promise<void> {
    for (const worker of storm) worker.messages.length = 0;
    const connecting = Promise.all(storm.map((worker) => worker.connect(resume)));
    const created = await coordinator.api('POST', '/routes', routeBody(live.id, `live-${resume}`));
    const startedAt = Date.now();
    await live.waitFor(() => live.table.has(created.body.id), 1000, 'diff of the live worker');
    assert.ok(Date.now() - startedAt < 1000);
    await connecting;
    await eventually('every session answered', 60_000, () =>
      storm.every((worker) => worker.messages.some((m) => ['snapshot', 'diff'].includes(m.type)))
        ? true
        : undefined,
    );
  }

  test('1,000 sessions opening at once are all served', { timeout: 180_000 }, async () => {
    await connectAll(false);
    assert.ok(storm.every((worker) => worker.messages[0].type === 'snapshot'));
    const workers = await coordinator.api('GET', '/workers');
    const connected = workers.body.workers.filter((worker: any) => worker.connected);
    assert.equal(connected.length, SESSIONS + 1);
  });

  test('1,000 sessions resuming at once get diffs', { timeout: 180_000 }, async () => {
    for (const worker of storm) worker.kill();
    await inBatches(storm, SESSIONS, (worker) => {
      return worker.waitFor(() => worker.closeCode !== null, 5000, 'close');
    });
    await connectAll(true);
    assert.ok(storm.every((worker) => worker.messages[0].type === 'diff'));
    await eventually('every instance connected', 30_000, async () => {
      const workers = await coordinator.api('GET', '/workers');
      const connected = workers.body.workers.filter((worker: any) => worker.connected);
      return connected.length === SESSIONS + 1 ? true : undefined;
    });
  });
});
