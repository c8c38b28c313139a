import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  assertTableMatchesRest,
  connectWorker,
  eventually,
  routeBody,
  startSyncCoordinator,
  type SyncCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

/** Reconnects with the worker's table and returns the first message of the new session. */
async function resume(worker: ScriptedWorker): Promise<Record<string, any>> {
  worker.messages.length = 0;
  await worker.connect(true);
  await worker.waitFor(() => worker.messages.length > 0, 5000, 'reply to hello');
  return worker.messages[0];
}

/** Waits until the worker has acknowledged everything the coordinator holds for it. */
async function waitInSync(coordinator: SyncCoordinator, worker: ScriptedWorker): Promise<void> {
  await eventually('worker in sync', 5000, async () => {
    const state = await coordinator.api('GET', `/workers/${worker.id}`);
    return state.body.applied_revision >= state.body.target_revision ? true : undefined;
  });
}

describe('resume after reconnect', { skip }, () => {
  let db: TestDatabase;
  let coordinator: SyncCoordinator;
  let worker: ScriptedWorker;
  const created: any[] = [];

  before(async () => {
    db = await createTestDatabase();
    coordinator = await startSyncCoordinator(db);
    worker = await connectWorker(coordinator, { authority: 'resume-a', portRange: [20000, 20099] });
    for (let i = 0; i < 3; i++) {
      const response = await coordinator.api('POST', '/routes', routeBody(worker.id, `s${i}`));
      assert.equal(response.status, 201);
      created.push(response.body);
    }
    const isHeld = () => created.every((route) => worker.table.has(route.id));
    await worker.waitFor(isHeld, 5000, 'routes');
    await waitInSync(coordinator, worker);
  });
  after(async () => {
    await worker?.close();
    await coordinator?.close();
    await db?.drop();
  });

  test('resume covered by the change log gets one diff', async () => {
    await worker.close();
    const from = worker.revision;
    const added = await coordinator.api('POST', '/routes', routeBody(worker.id, 's-new'));
    const patched = await coordinator.api('PATCH', `/routes/${created[0].id}`, {
      backends: [{ host: '192.0.2.20', port: 9000 }],
    });
    const removed = await coordinator.api('DELETE', `/routes/${created[1].id}`);
    assert.equal(added.status, 201);
    assert.equal(patched.status, 200);
    assert.equal(removed.status, 204);

    const reply = await resume(worker);
    assert.equal(reply.type, 'diff');
    assert.equal(reply.from_revision, from);
    assert.deepEqual(reply.removes, [created[1].id]);
    const upserted = reply.upserts.map((route: any) => route.id).sort();
    assert.deepEqual(upserted, [added.body.id, created[0].id].sort());
    await waitInSync(coordinator, worker);
    assert.equal(worker.messages.length, 1);
    await assertTableMatchesRest(coordinator.api, worker);
  });

  test('resume with nothing new gets an empty diff', async () => {
    await worker.close();
    const reply = await resume(worker);
    assert.equal(reply.type, 'diff');
    assert.deepEqual(reply.upserts, []);
    assert.deepEqual(reply.removes, []);
    assert.equal(reply.digest, worker.digest);
  });

  test('resume with another epoch gets a snapshot', async () => {
    await worker.close();
    worker.epoch = randomUUID();
    const reply = await resume(worker);
    assert.equal(reply.type, 'snapshot');
    await assertTableMatchesRest(coordinator.api, worker);
  });

  test('resume with a wrong digest gets a snapshot', async () => {
    await worker.close();
    const [first] = worker.table.keys();
    worker.table.delete(first);
    const reply = await resume(worker);
    assert.equal(reply.type, 'snapshot');
    await assertTableMatchesRest(coordinator.api, worker);
  });

  test('resume from a revision ahead of the database gets a snapshot', async () => {
    await worker.close();
    worker.revision += 1_000_000;
    const reply = await resume(worker);
    assert.equal(reply.type, 'snapshot');
    await assertTableMatchesRest(coordinator.api, worker);
  });
});

describe('resume after compaction', { skip }, () => {
  let db: TestDatabase;
  let coordinator: SyncCoordinator;

  before(async () => {
    db = await createTestDatabase();
    coordinator = await startSyncCoordinator(db, {
      APPPROXY_CHANGELOG_MAX_COUNT: '3',
      APPPROXY_CHANGELOG_COMPACTION_INTERVAL_S: '1',
    });
  });
  after(async () => {
    await coordinator?.close();
    await db?.drop();
  });

  test('resume from a compacted revision gets a snapshot', async () => {
    const worker = await connectWorker(coordinator, { authority: 'resume-b' });
    const first = await coordinator.api('POST', '/routes', routeBody(worker.id, 'c0'));
    await worker.waitFor(() => worker.table.has(first.body.id), 5000, 'route');
    await worker.close();
    for (let i = 1; i <= 5; i++) {
      const response = await coordinator.api('POST', '/routes', routeBody(worker.id, `c${i}`));
      assert.equal(response.status, 201);
    }
    await eventually('compaction past the worker', 10_000, async () => {
      const events = await coordinator.api('GET', `/events?since=${worker.revision}`);
      return events.status === 410 ? true : undefined;
    });

    worker.messages.length = 0;
    await worker.connect(true);
    await worker.waitFor(() => worker.messages.length > 0, 5000, 'reply to hello');
    assert.equal(worker.messages[0].type, 'snapshot');
    await worker.waitFor(() => worker.table.size === 6, 5000, 'whole table');
    await assertTableMatchesRest(coordinator.api, worker);
    await worker.close();
  });
});
