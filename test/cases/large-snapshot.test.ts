import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { MAX_MESSAGE_BYTES } from '../../proto/index.ts';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { insertRoutes } from '../helpers/bulk-routes.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  connectedWorker,
  currentRevision,
  eventsSince,
  routeBody,
  tableMessages,
  waitInSync,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

const ROUTE_COUNT = 20_000;
/** The whole table must be far over one message, and over 6 MB of JSON. */
const MIN_TABLE_BYTES = 6 * 1024 * 1024;

// A table far larger than one message reaches the worker whole, in several
// snapshot messages, without holding up other workers' updates.
describe('large snapshot', { skip }, () => {
  let coordinator: TestCoordinator;
  let big: ScriptedWorker;
  let small: ScriptedWorker;

  before(async () => {
    coordinator = await startCaseCoordinator();
    big = await connectedWorker(coordinator, {
      authority: 'proxy-big',
      mode: 'wildcard',
      wildcardDomain: '.apps.example.test',
    });
    small = await connectedWorker(coordinator, { authority: 'proxy-small' });
    // Written through the coordinator's own group-commit writer, 5,000 routes a
    // transaction: each takes a revision and a change-log row as a REST create would.
    await insertRoutes(coordinator.db.url as string, {
      id: big.id,
      frontendMode: 'wildcard',
      hostname: 'proxy-big.example.test',
      wildcardDomain: '.apps.example.test',
    }, ROUTE_COUNT);
    await waitInSync(coordinator.api, big.id, 30_000);
  });
  after(async () => {
    big?.kill();
    small?.kill();
    await coordinator?.stop();
  });

  test('bulk write diffs fit the message limit', async () => {
    const diffs = tableMessages(big).filter((m) => m.type === 'diff');
    assert.ok(diffs.length > 0);
    for (const diff of diffs) {
      const size = Buffer.byteLength(JSON.stringify(diff));
      assert.ok(size <= MAX_MESSAGE_BYTES, `a diff of ${size} bytes`);
    }
    assert.equal(big.table.size, ROUTE_COUNT);
  });

  test('fresh session gets the whole table', async () => {
    // A restarted process has no table and sends no resume fields.
    await big.close();
    big.table = new Map();
    const registration = await big.register();
    assert.equal(registration.routes.length, 1000);
    assert.equal(registration.routes_complete, false);
    const mark = big.messages.length;
    const startedAt = Date.now();
    await big.connect();

    const created = await coordinator.api(
      'POST',
      '/routes',
      routeBody('other', 'lab', '192.0.2.121:8080', { worker_id: small.id }),
    );
    assert.equal(created.status, 201);
    const createdAt = Date.now();
    await small.waitFor(() => small.table.has(created.body.id), 1000, "the other worker's diff");
    assert.ok(Date.now() - createdAt <= 1000);

    const isWhole = () => {
      const last = tableMessages(big, mark).at(-1);
      return last?.type === 'snapshot' && last.more === undefined;
    };
    await big.waitFor(isWhole, 10_000, 'the whole table');
    assert.equal(big.table.size, ROUTE_COUNT);
    assert.ok(Date.now() - startedAt <= 10_000);
    const parts = tableMessages(big, mark).filter((m) => m.type === 'snapshot');
    assert.ok(parts.length > 1, 'the table came in several messages');
    const sizes = parts.map((part) => Buffer.byteLength(JSON.stringify(part)));
    const total = sizes.reduce((sum, size) => sum + size, 0);
    assert.ok(total > MIN_TABLE_BYTES, `table of ${total} bytes`);
    for (const size of sizes) assert.ok(size <= MAX_MESSAGE_BYTES, `a message of ${size} bytes`);
    assert.ok(parts.every((part) => part.revision === parts[0].revision));
    assert.equal(big.digest, parts.at(-1)?.digest);
    await waitInSync(coordinator.api, big.id, 10_000);
    const worker = await coordinator.api('GET', `/workers/${big.id}`);
    assert.equal(worker.body.route_count, ROUTE_COUNT);
    assert.ok(worker.body.applied_revision >= worker.body.target_revision);
  });

  test('body over 1 MiB gets 413', async () => {
    const before = await currentRevision(coordinator.api);
    const labels: Record<string, string> = {};
    for (let i = 0; i < 1100; i++) labels[`key-${i}`] = 'v'.repeat(1000);
    const body = routeBody('huge', 'jupyter', '192.0.2.122:8080', { labels });
    const response = await coordinator.api('POST', '/routes', body);
    assert.equal(response.status, 413);
    assert.equal(await currentRevision(coordinator.api), before);
    assert.deepEqual(await eventsSince(coordinator.api, before), []);
  });
});
