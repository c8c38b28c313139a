import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import { TableDigest, tableDigest, type Route } from '../../proto/index.ts';
import { buildDiffs, foldChanges } from '../../src/hub/sync.ts';
import type { ChangeRecord } from '../../src/store/writer.ts';

const WORKER = randomUUID();
const OTHER = randomUUID();
const EPOCH = randomUUID();

function route(id: string, revision: number, workerId = WORKER, labelBytes = 10): Route {
  return {
    id,
    session_id: `s-${id.slice(0, 8)}`,
    service: 'lab',
    protocol: 'http',
    mode: 'interactive',
    backends: [{ host: '192.0.2.1', port: 80, weight: 1 }],
    worker_id: workerId,
    port: 20000,
    subdomain: null,
    url: 'http://proxy.example.test:20000',
    open_to_public: false,
    allowed_client_ips: [],
    labels: { note: 'x'.repeat(labelBytes) },
    status: 'pending',
    revision,
    created_at: '2026-01-01T00:00:00.000Z',
    updated_at: '2026-01-01T00:00:00.000Z',
  };
}

function change(type: ChangeRecord['type'], after: Route, before?: Route): ChangeRecord {
  const isDeleted = type === 'route.deleted';
  return {
    revision: after.revision,
    type,
    at: '2026-01-01T00:00:00.000Z',
    route_id: after.id,
    session_id: after.session_id,
    worker_id: isDeleted ? null : after.worker_id,
    prev_worker_id: before?.worker_id ?? null,
    prev_revision: before?.revision ?? null,
    route: after,
    worker: null,
    previous: null,
    reason: isDeleted ? 'api' : null,
  };
}

/** Applies diffs to a table of id → revision, checking each one's start and digest. */
function apply(table: Map<string, number>, from: number, diffs: ReturnType<typeof buildDiffs>) {
  let revision = from;
  for (const diff of diffs) {
    const message = JSON.parse(diff.text);
    assert.equal(message.from_revision, revision);
    for (const id of message.removes) table.delete(id);
    for (const upsert of message.upserts) table.set(upsert.id, upsert.revision);
    const digest = tableDigest([...table].map(([id, rev]) => ({ id, revision: rev })));
    assert.equal(message.digest, digest);
    revision = message.revision;
  }
  return revision;
}

describe('diff building', () => {
  test('changes of one route fold into one upsert', () => {
    const id = randomUUID();
    const created = route(id, 11);
    const updated = route(id, 12);
    const changes = [change('route.created', created), change('route.updated', updated, created)];
    const delta = foldChanges(WORKER, changes, new TableDigest());
    assert.deepEqual(delta.upserts.map((r) => r.revision), [12]);
    assert.deepEqual(delta.removes, []);
    assert.equal(delta.digest.toHex(), tableDigest([{ id, revision: 12 }]));
  });

  test('route created and deleted together leaves no trace', () => {
    const created = route(randomUUID(), 11);
    const deleted = { ...created, revision: 12 };
    const diffs = buildDiffs({
      workerId: WORKER,
      epoch: EPOCH,
      changes: [change('route.created', created), change('route.deleted', deleted, created)],
      fromRevision: 10,
      toRevision: 12,
      digest: new TableDigest(),
      maxBytes: 512 * 1024,
      isReplyRequired: false,
    });
    assert.deepEqual(diffs, []);
  });

  test('reply to hello is sent even when empty', () => {
    const diffs = buildDiffs({
      workerId: WORKER,
      epoch: EPOCH,
      changes: [],
      fromRevision: 10,
      toRevision: 15,
      digest: new TableDigest(),
      maxBytes: 512 * 1024,
      isReplyRequired: true,
    });
    assert.equal(diffs.length, 1);
    const message = JSON.parse(diffs[0].text);
    assert.equal(message.from_revision, 10);
    assert.equal(message.revision, 15);
    assert.deepEqual(message.upserts, []);
  });

  test('large burst splits into chained diffs', () => {
    const table = new Map<string, number>();
    const existing = route(randomUUID(), 5);
    table.set(existing.id, 5);
    const changes: ChangeRecord[] = [];
    for (let i = 0; i < 40; i++) {
      changes.push(change('route.created', route(randomUUID(), 100 + i, WORKER, 2000)));
    }
    const moved = { ...existing, worker_id: OTHER, revision: 140 };
    changes.push(change('route.moved', moved, existing));
    const diffs = buildDiffs({
      workerId: WORKER,
      epoch: EPOCH,
      changes,
      fromRevision: 99,
      toRevision: 150,
      digest: new TableDigest(tableDigest([{ id: existing.id, revision: 5 }])),
      maxBytes: 20_000,
      isReplyRequired: false,
    });
    assert.ok(diffs.length > 2, `${diffs.length} diffs`);
    for (const diff of diffs) assert.ok(Buffer.byteLength(diff.text) < 25_000);
    assert.equal(diffs.at(-1)?.revision, 150);
    assert.equal(diffs.at(-1)?.changesCarried, changes.length);
    const revision = apply(table, 99, diffs);
    assert.equal(revision, 150);
    assert.equal(table.size, 40);
    assert.equal(table.has(existing.id), false);
  });
});
