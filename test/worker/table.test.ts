import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { EMPTY_DIGEST, tableDigest } from '../../proto/index.ts';
import { RouteTable, type TableDiff, type WireRoute } from '../../src/worker/table.ts';
import { makeRoute } from './helpers.ts';

const EPOCH = 'epoch-a';

function snapshotOf(routes: WireRoute[], revision: number, more?: boolean) {
  return { epoch: EPOCH, revision, routes, digest: tableDigest(routes), more };
}

function diffOf(table: WireRoute[], fromRevision: number, change: Partial<TableDiff>): TableDiff {
  const removes = change.removes ?? [];
  const upserts = change.upserts ?? [];
  const after = new Map(table.map((route) => [route.id, route]));
  for (const id of removes) after.delete(id);
  for (const route of upserts) after.set(route.id, route);
  return {
    epoch: EPOCH,
    from_revision: fromRevision,
    revision: change.revision ?? fromRevision + 1,
    upserts,
    removes,
    digest: tableDigest(after.values()),
    ...change,
  };
}

describe('RouteTable', () => {
  test('empty snapshot gives 32 zeros digest', () => {
    const table = new RouteTable();
    const result = table.applySnapshot(snapshotOf([], 0));

    assert.equal(result.status, 'applied');
    assert.equal(table.digest, '0'.repeat(32));
    assert.equal(EMPTY_DIGEST, '0'.repeat(32));
    assert.equal(table.revision, 0);
    assert.equal(table.hasSnapshot, true);
  });

  test('snapshot indexes routes by port and subdomain', () => {
    const table = new RouteTable();
    const byPort = makeRoute({ port: 20001 });
    const bySubdomain = makeRoute({ subdomain: 'jupyter-s1' });
    table.applySnapshot(snapshotOf([byPort, bySubdomain], 5));

    assert.equal(table.routeForPort(20001), byPort);
    assert.equal(table.routeForSubdomain('Jupyter-S1'), bySubdomain);
    assert.equal(table.routeForPort(20002), undefined);
    assert.equal(table.digest, tableDigest([byPort, bySubdomain]));
  });

  test('snapshot chunks swap in atomically', () => {
    const table = new RouteTable();
    const old = makeRoute({ port: 20000 });
    table.applySnapshot(snapshotOf([old], 3));
    const first = makeRoute({ port: 20001 });
    const second = makeRoute({ port: 20002 });
    const digest = tableDigest([first, second]);
    let changes = 0;
    table.on('change', () => changes++);

    const chunk = { epoch: EPOCH, revision: 9, digest };
    const partial = table.applySnapshot({ ...chunk, routes: [first], more: true });
    assert.equal(partial.status, 'partial');
    assert.equal(table.revision, 3);
    assert.equal(table.routeForPort(20000), old);
    assert.equal(table.routeForPort(20001), undefined);
    assert.equal(changes, 0);

    const last = table.applySnapshot({ ...chunk, routes: [second] });
    assert.deepEqual(last, { status: 'applied', revision: 9, digest, routeCount: 2 });
    assert.equal(table.routeForPort(20000), undefined);
    assert.equal(table.routeForPort(20001), first);
    assert.equal(table.routeForPort(20002), second);
    assert.equal(changes, 1);
  });

  test('snapshot chunk of new revision restarts collection', () => {
    const table = new RouteTable();
    const stale = makeRoute({ port: 20001 });
    const fresh = makeRoute({ port: 20002 });
    table.applySnapshot({ ...snapshotOf([stale], 4), more: true });
    const result = table.applySnapshot(snapshotOf([fresh], 5));

    assert.equal(result.status, 'applied');
    assert.equal(table.size, 1);
    assert.equal(table.routeForPort(20002), fresh);
  });

  test('diff upserts and removes routes', () => {
    const table = new RouteTable();
    const kept = makeRoute({ port: 20001 });
    const removed = makeRoute({ port: 20002 });
    table.applySnapshot(snapshotOf([kept, removed], 10));
    const changed = { ...kept, port: 20003, revision: 11 };
    const added = makeRoute({ port: 20002, revision: 12 });
    const diff = diffOf([kept, removed], 10, {
      revision: 12,
      upserts: [changed, added],
      removes: [removed.id],
    });

    const result = table.applyDiff(diff);
    const expected = { status: 'applied', revision: 12, digest: diff.digest, routeCount: 2 };
    assert.deepEqual(result, expected);
    assert.equal(table.routeForPort(20001), undefined);
    assert.equal(table.routeForPort(20003), changed);
    assert.equal(table.routeForPort(20002), added);
    assert.equal(table.routeById(removed.id), undefined);
  });

  test('diff moving port between routes keeps index', () => {
    const table = new RouteTable();
    const leaving = makeRoute({ port: 20001 });
    table.applySnapshot(snapshotOf([leaving], 1));
    // The new owner of the port comes first, so removing the old entry must not drop it.
    const arriving = makeRoute({ port: 20001, revision: 2 });
    const moved = { ...leaving, port: 20002, revision: 3 };
    table.applyDiff(diffOf([leaving], 1, { revision: 3, upserts: [arriving, moved] }));

    assert.equal(table.routeForPort(20001), arriving);
    assert.equal(table.routeForPort(20002), moved);
  });

  test('diff from wrong revision is rejected', () => {
    const table = new RouteTable();
    const route = makeRoute({ port: 20001 });
    table.applySnapshot(snapshotOf([route], 7));
    const diff = diffOf([route], 6, { revision: 8, removes: [route.id] });

    const result = table.applyDiff(diff);
    assert.ok(result.status === 'mismatch');
    assert.equal(result.dropped, false);
    assert.match(result.error, /from revision 6.*at revision 7/);
    assert.equal(table.revision, 7);
    assert.equal(table.routeForPort(20001), route);
  });

  test('diff before any snapshot is rejected', () => {
    const table = new RouteTable();
    const result = table.applyDiff(diffOf([], 0, { upserts: [makeRoute()] }));

    assert.equal(result.status, 'mismatch');
    assert.equal(table.size, 0);
  });

  test('digest mismatch after diff drops table', () => {
    const table = new RouteTable();
    const route = makeRoute({ port: 20001 });
    table.applySnapshot(snapshotOf([route], 1));
    const drops: string[] = [];
    table.on('dropped', (reason) => drops.push(reason));

    const result = table.applyDiff({ ...diffOf([route], 1, {}), digest: 'f'.repeat(32) });
    assert.ok(result.status === 'mismatch');
    assert.equal(result.dropped, true);
    assert.equal(table.size, 0);
    assert.equal(table.revision, null);
    assert.equal(table.epoch, null);
    assert.equal(table.digest, EMPTY_DIGEST);
    assert.equal(table.routeForPort(20001), undefined);
    assert.deepEqual(drops, ['digest_mismatch']);
  });

  test('digest mismatch after snapshot drops table', () => {
    const table = new RouteTable();
    table.applySnapshot(snapshotOf([makeRoute({ port: 20001 })], 1));
    const routes = [makeRoute({ port: 20002 })];

    const result = table.applySnapshot({ ...snapshotOf(routes, 2), digest: 'a'.repeat(32) });
    assert.equal(result.status, 'mismatch');
    assert.equal(table.size, 0);
    assert.equal(table.hasSnapshot, false);
  });

  test('snapshot of new epoch drops old table at once', () => {
    const table = new RouteTable();
    table.applySnapshot(snapshotOf([makeRoute({ port: 20001 })], 40));
    const drops: string[] = [];
    table.on('dropped', (reason) => drops.push(reason));
    const route = makeRoute({ port: 20002 });

    const partial = table.applySnapshot({
      epoch: 'epoch-b',
      revision: 2,
      routes: [route],
      digest: tableDigest([route]),
      more: true,
    });
    assert.equal(partial.status, 'partial');
    assert.deepEqual(drops, ['epoch_changed']);
    assert.equal(table.routeForPort(20001), undefined);

    const last = { epoch: 'epoch-b', revision: 2, routes: [], digest: tableDigest([route]) };
    table.applySnapshot(last);
    assert.equal(table.epoch, 'epoch-b');
    assert.equal(table.revision, 2);
    assert.equal(table.routeForPort(20002), route);
  });

  test('diff of new epoch drops table', () => {
    const table = new RouteTable();
    const route = makeRoute({ port: 20001 });
    table.applySnapshot(snapshotOf([route], 3));

    const result = table.applyDiff({ ...diffOf([route], 3, {}), epoch: 'epoch-b' });
    assert.ok(result.status === 'mismatch');
    assert.equal(result.dropped, true);
    assert.equal(table.size, 0);
    assert.equal(table.epoch, null);
  });

  test('incremental digest matches full digest', () => {
    const table = new RouteTable();
    let routes = [makeRoute({ port: 1 }), makeRoute({ port: 2 }), makeRoute({ port: 3 })];
    table.applySnapshot(snapshotOf(routes, 1));
    for (let revision = 2; revision < 30; revision++) {
      const target = routes[revision % routes.length];
      const updated = { ...target, revision };
      const diff = diffOf(routes, revision - 1, { revision, upserts: [updated] });
      routes = routes.map((route) => (route.id === target.id ? updated : route));

      assert.equal(table.applyDiff(diff).status, 'applied');
      assert.equal(table.digest, tableDigest(routes));
    }
  });
});
