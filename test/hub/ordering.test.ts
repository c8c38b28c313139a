import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  assertTableMatchesRest,
  connectWorker,
  eventually,
  readEvents,
  routeBody,
  startSyncCoordinator,
  type Api,
  type SyncCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();
const WRITERS = 32;
const ROUNDS = 4;

/** Checks that a worker's snapshots and diffs form one chain of rising revisions. */
function assertChained(worker: ScriptedWorker): void {
  let revision: number | null = null;
  for (const message of worker.messages) {
    if (message.type === 'snapshot') {
      if (revision !== null) assert.ok(message.revision >= revision, 'snapshot goes back');
      if (!message.more) revision = message.revision;
      continue;
    }
    if (message.type !== 'diff') continue;
    assert.equal(message.from_revision, revision, `diff ${message.revision} starts elsewhere`);
    assert.ok(message.revision > (revision as number), `diff ${message.revision} does not advance`);
    revision = message.revision;
  }
}

/** Reads `GET /events` page by page while writes run, checking that revisions follow on. */
class EventReader {
  revision = 0;
  count = 0;
  #isStopped = false;
  #done: Promise<void>;

  constructor(api: Api) {
    this.#done = this.#run(api);
  }

  async #run(api: Api): Promise<void> {
    while (!this.#isStopped) {
      const response = await api('GET', `/events?since=${this.revision}&limit=50`);
      assert.equal(response.status, 200);
      for (const event of response.body.events) {
        assert.equal(event.revision, this.revision + 1, `event after ${this.revision}`);
        this.revision = event.revision;
        this.count += 1;
      }
      if (response.body.events.length < 50) await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  async stop(): Promise<void> {
    this.#isStopped = true;
    await this.#done;
  }
}

describe('ordering under concurrent writers', { skip }, () => {
  let db: TestDatabase;
  let first: SyncCoordinator;
  let second: SyncCoordinator;
  let workers: ScriptedWorker[];

  before(async () => {
    db = await createTestDatabase();
    first = await startSyncCoordinator(db);
    second = await startSyncCoordinator(db);
    workers = [
      await connectWorker(first, { authority: 'order-a', portRange: [20000, 20999] }),
      await connectWorker(second, { authority: 'order-b', portRange: [21000, 21999] }),
      await connectWorker(first, { authority: 'order-c', portRange: [22000, 22999] }),
    ];
  });
  after(async () => {
    for (const worker of workers ?? []) await worker.close();
    await first?.close();
    await second?.close();
    await db?.drop();
  });

  /** Creates, patches and deletes routes through alternating coordinators. */
  async function write(writer: number): Promise<number> {
    let writes = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const api = (writes % 2 === 0 ? first : second).api;
      const worker = workers[(writer + round) % workers.length];
      const created = await api('POST', '/routes', routeBody(worker.id, `w${writer}-r${round}`));
      assert.equal(created.status, 201);
      const other = (writes % 2 === 0 ? second : first).api;
      const patched = await other('PATCH', `/routes/${created.body.id}`, {
        backends: [{ host: '192.0.2.50', port: 9000 + round }],
      });
      assert.equal(patched.status, 200);
      writes += 2;
      if (round % 2 === 1) {
        assert.equal((await api('DELETE', `/routes/${created.body.id}`)).status, 204);
        writes += 1;
      }
    }
    return writes;
  }

  test('every change reaches all, once, in order', { timeout: 120_000 }, async () => {
    const reader = new EventReader(second.api);
    const counts = await Promise.all(Array.from({ length: WRITERS }, (_, i) => write(i)));
    assert.equal(counts.reduce((a, b) => a + b, 0), WRITERS * ROUNDS * 2.5);

    const health = await first.api('GET', '/health');
    await eventually('event reader at the last revision', 10_000, () =>
      reader.revision >= health.body.revision ? true : undefined,
    );
    await reader.stop();
    const events = await readEvents(first.api);
    assert.deepEqual(
      events.map((event) => event.revision),
      Array.from({ length: events.length }, (_, i) => i + 1),
    );
    assert.equal(events.at(-1).revision, health.body.revision);

    for (const worker of workers) {
      await eventually(`worker ${worker.options.authority} in sync`, 10_000, async () => {
        const state = await first.api('GET', `/workers/${worker.id}`);
        return state.body.applied_revision >= state.body.target_revision ? true : undefined;
      });
      assertChained(worker);
      await assertTableMatchesRest(first.api, worker);
    }
  });
});
