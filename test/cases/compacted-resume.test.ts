import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import postgres from 'postgres';
import { compactChanges } from '../../src/store/changes.ts';
import type { Sql } from '../../src/store/database.ts';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  assertTableMatchesRest,
  connectedWorker,
  currentRevision,
  eventsSince,
  routeBody,
  tableMessages,
  waitInSync,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

/** Change-log rows kept by the compaction this suite runs. */
const KEEP_CHANGES = 50;

/** Runs `tasks` with at most `limit` in flight. */
async function inParallel<T>(limit: number, tasks: Array<() => Promise<T>>): Promise<T[]> {
  const results: T[] = [];
  let next = 0;
  const lanes = Array.from({ length: limit }, async () => {
    while (next < tasks.length) {
      const index = next++;
      results[index] = await tasks[index]();
    }
  });
  await Promise.all(lanes);
  return results;
}

// A worker resuming from a revision the change log no longer covers gets a
// snapshot, never a diff that silently skips the compacted changes.
describe('resume across a compacted change log', { skip }, () => {
  let coordinator: TestCoordinator;
  let sql: Sql;
  let worker: ScriptedWorker;

  before(async () => {
    coordinator = await startCaseCoordinator();
    sql = postgres(coordinator.db.url as string, { max: 1, onnotice: () => {} }) as unknown as Sql;
    worker = await connectedWorker(coordinator, { authority: 'proxy-a' });
  });
  after(async () => {
    worker?.kill();
    await sql?.end();
    await coordinator?.stop();
  });

  test('resume before compaction gets snapshot', async () => {
    const pinned = { worker_id: worker.id };
    const create = (sessionId: string, backend: string) => () =>
      coordinator.api('POST', '/routes', routeBody(sessionId, 'jupyter', backend, pinned));
    const seeded = await inParallel(
      10,
      Array.from({ length: 20 }, (_, i) => create(`seed-${i}`, '192.0.2.80:8080')),
    );
    await worker.waitFor(() => worker.table.size === 20, 3000, 'seeded routes');
    await waitInSync(coordinator.api, worker.id);
    const r0 = worker.revision;
    await worker.close();

    // 200 changes to the worker's routes: 100 creates, 60 backend changes, 40 deletes.
    const created = await inParallel(
      10,
      Array.from({ length: 100 }, (_, i) => create(`gone-${i}`, '192.0.2.81:8080')),
    );
    assert.ok(created.every((response) => response.status === 201));
    const ids = [...seeded, ...created].map((response) => response.body.id);
    await inParallel(10, ids.slice(0, 60).map((id) => () =>
      coordinator.api('PATCH', `/routes/${id}`, { backends: [{ host: '192.0.2.82', port: 8080 }] }),
    ));
    const deleted = ids.slice(60, 100);
    const removals = await inParallel(
      10,
      deleted.map((id) => () => coordinator.api('DELETE', `/routes/${id}`)),
    );
    assert.ok(removals.every((response) => response.status === 204));

    const compacted = await compactChanges(sql, { maxAgeMs: 86_400_000, maxCount: KEEP_CHANGES });
    assert.ok(compacted > 0);
    const gone = await coordinator.api('GET', `/events?since=${r0}`);
    assert.equal(gone.status, 410);
    assert.ok(gone.body.oldest_revision > r0 + 1);

    const mark = worker.messages.length;
    await worker.connect(true);
    const hasMessage = () => tableMessages(worker, mark).length > 0;
    await worker.waitFor(hasMessage, 3000, 'the first table message');
    const [first] = tableMessages(worker, mark);
    assert.equal(first.type, 'snapshot', `got a diff from ${first.from_revision}`);
    const revision = await currentRevision(coordinator.api);
    assert.equal(first.revision, revision);
    await worker.waitFor(() => worker.revision === revision, 3000, 'the whole snapshot');
    assert.equal(worker.digest, first.digest);
    for (const id of deleted) assert.equal(worker.table.has(id), false);
    await assertTableMatchesRest(coordinator.api, worker);
    await waitInSync(coordinator.api, worker.id);
  });

  test('resume inside kept log gets contiguous diffs', async () => {
    await worker.close();
    const ids = [...worker.table.keys()];
    for (let i = 0; i < 5; i++) {
      const patched = await coordinator.api('PATCH', `/routes/${ids[i]}`, {
        backends: [{ host: '192.0.2.83', port: 8000 + i }],
      });
      assert.equal(patched.status, 200);
    }
    const revision = await currentRevision(coordinator.api);
    // The disconnect took a revision too; worker events leave the table as it was.
    const between = await eventsSince(coordinator.api, worker.revision);
    const tableChanges = between.filter(
      (event) => event.revision <= revision - 5 && event.type.startsWith('route.'),
    );
    assert.deepEqual(tableChanges, []);
    worker.revision = revision - 5;

    const mark = worker.messages.length;
    await worker.connect(true);
    await worker.waitFor(() => worker.revision === revision, 3000, 'the current revision');
    let previous = revision - 5;
    for (const message of tableMessages(worker, mark)) {
      if (message.type === 'snapshot') break;
      assert.equal(message.from_revision, previous);
      previous = message.revision;
    }
    await assertTableMatchesRest(coordinator.api, worker);
    await waitInSync(coordinator.api, worker.id);
  });
});
