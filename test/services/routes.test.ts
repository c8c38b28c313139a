import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { eventsOfType, registerWorker, resetState, routeBody } from './helpers.ts';

const skip = await postgresSkipReason();

// Workers here register over REST and never heartbeat, so the interval is long enough
// that none is declared lost while a test runs.
describe('route writes on the database', { skip }, () => {
  let coordinator: TestCoordinator;

  before(async () => {
    coordinator = await startTestCoordinator({ APPPROXY_HEARTBEAT_INTERVAL_MS: '60000' });
  });
  after(() => coordinator?.stop());
  afterEach(() => resetState(coordinator));

  const create = (body: unknown) => coordinator.api('POST', '/routes', body);

  test('taken port is a 409 naming its route', async () => {
    await registerWorker(coordinator, 'conflict-port', { port_range: [20000, 20009] });
    const first = await create(routeBody('cp-1', 'web', { port: 20005 }));
    assert.equal(first.status, 201);
    const second = await create(routeBody('cp-2', 'web', { port: 20005 }));
    assert.equal(second.status, 409);
    assert.equal(second.body.conflicting_route_id, first.body.id);
  });

  test('50 concurrent creates of one port: exactly one wins', async () => {
    await registerWorker(coordinator, 'race', { port_range: [20000, 20099] });
    const responses = await Promise.all(
      Array.from({ length: 50 }, (_, i) => create(routeBody(`race-${i}`, 'web', { port: 20042 }))),
    );
    const created = responses.filter((response) => response.status === 201);
    const conflicts = responses.filter((response) => response.status === 409);
    assert.equal(created.length, 1);
    assert.equal(conflicts.length, 49);
    for (const conflict of conflicts) {
      assert.equal(conflict.body.conflicting_route_id, created[0].body.id);
    }
    const stored = await coordinator.api('GET', '/routes?limit=1000');
    assert.equal(stored.body.routes.length, 1);
  });

  test('taken subdomain is a 409 naming its route', async () => {
    await registerWorker(coordinator, 'conflict-sub', {
      frontend_mode: 'wildcard',
      port_range: undefined,
      wildcard_domain: '.conflict.example.test',
    });
    const first = await create(routeBody('cs-1', 'web', { subdomain: 'Shared' }));
    assert.equal(first.status, 201);
    assert.equal(first.body.subdomain, 'shared');
    const second = await create(routeBody('cs-2', 'web', { subdomain: 'shared' }));
    assert.equal(second.status, 409);
    assert.equal(second.body.conflicting_route_id, first.body.id);
  });

  test('same session and service with same spec returns it', async () => {
    await registerWorker(coordinator, 'idem');
    const body = routeBody('idem-1', 'web', {
      backends: [
        { host: '192.0.2.1', port: 80 },
        { host: '192.0.2.2', port: 80, weight: 1 },
      ],
      idle_timeout_s: 600,
    });
    const first = await create(body);
    assert.equal(first.status, 201);
    const reordered = { ...body, backends: [...body.backends].reverse() };
    const again = await create(reordered);
    assert.equal(again.status, 200);
    assert.equal(again.body.id, first.body.id);
    assert.equal(again.body.revision, first.body.revision);
  });

  test('same session and service with another spec is a 409', async () => {
    await registerWorker(coordinator, 'idem-other');
    const first = await create(routeBody('idem-2', 'web'));
    const backends = [{ host: '192.0.2.99', port: 1 }];
    const other = await create(routeBody('idem-2', 'web', { backends }));
    assert.equal(other.status, 409);
    assert.equal(other.body.conflicting_route_id, first.body.id);
  });

  test('idle timeout is part of the spec', async () => {
    await registerWorker(coordinator, 'idem-idle');
    const first = await create(routeBody('idem-3', 'web', { idle_timeout_s: 60 }));
    assert.equal(first.body.idle_timeout_s, 60);
    const without = await create(routeBody('idem-3', 'web'));
    assert.equal(without.status, 409);
    const longer = await create(routeBody('idem-3', 'web', { idle_timeout_s: 120 }));
    assert.equal(longer.status, 409);
  });

  test('repeat with the placement it got returns it', async () => {
    const worker = await registerWorker(coordinator, 'idem-place');
    const first = await create(routeBody('idem-4', 'web'));
    const same = await create(
      routeBody('idem-4', 'web', { worker_id: worker.id, port: first.body.port }),
    );
    assert.equal(same.status, 200);
    const otherPort = await create(routeBody('idem-4', 'web', { port: first.body.port + 1 }));
    assert.equal(otherPort.status, 409);
  });

  test('generated subdomain is normalised', async () => {
    await registerWorker(coordinator, 'names', {
      frontend_mode: 'wildcard',
      port_range: undefined,
      wildcard_domain: '.names.example.test',
      advertised_port: 8443,
    });
    const created = await create(routeBody('Team_A/Müller', 'lab'));
    assert.equal(created.status, 201);
    assert.equal(created.body.subdomain, 'xn--lab-team-a-mller-uzb');
    assert.equal(created.body.url, 'http://xn--lab-team-a-mller-uzb.names.example.test:8443');
  });

  test('taken generated subdomain gets a random suffix', async () => {
    await registerWorker(coordinator, 'suffix', {
      frontend_mode: 'wildcard',
      port_range: undefined,
      wildcard_domain: '.suffix.example.test',
    });
    // Both sessions normalise to the same name, web-a-b.
    const first = await create(routeBody('A.B', 'web'));
    const second = await create(routeBody('a-b', 'web'));
    assert.equal(first.body.subdomain, 'web-a-b');
    assert.match(second.body.subdomain, /^web-a-b-[0-9a-f]{6}$/);
  });

  test('wildcard domain is stored and found in lower case', async () => {
    const worker = await registerWorker(coordinator, 'case', {
      frontend_mode: 'wildcard',
      port_range: undefined,
      wildcard_domain: '.Apps.Case.TEST',
    });
    assert.equal(worker.wildcard_domain, '.apps.case.test');
    const created = await create(routeBody('s1', 'jupyter'));
    assert.equal(created.body.url, 'http://jupyter-s1.apps.case.test');
    const found = await coordinator.api('GET', '/lookup?host=Jupyter-S1.APPS.case.test:443');
    assert.equal(found.status, 200);
    assert.equal(found.body.id, created.body.id);
  });

  test('wildcard domain differing only in case is taken', async () => {
    await registerWorker(coordinator, 'case-a', {
      frontend_mode: 'wildcard',
      port_range: undefined,
      wildcard_domain: '.taken.case.test',
    });
    const body = {
      authority: 'case-b',
      frontend_mode: 'wildcard',
      hostname: 'case-b.example.test',
      wildcard_domain: '.TAKEN.case.test',
    };
    const token = coordinator.tokens.worker;
    const response = await coordinator.api('POST', '/workers/register', body, token);
    assert.equal(response.status, 409);
  });

  test('stale If-Match on PATCH is a 412', async () => {
    await registerWorker(coordinator, 'etag-patch');
    const created = await create(routeBody('etag-1', 'web'));
    const etag = `"${created.body.revision}"`;
    const changed = await patchWithEtag(created.body.id, { labels: { a: '1' } }, etag);
    assert.equal(changed.status, 200);
    const stale = await patchWithEtag(created.body.id, { labels: { a: '2' } }, etag);
    assert.equal(stale.status, 412);
    const current = await coordinator.api('GET', `/routes/${created.body.id}`);
    assert.deepEqual(current.body.labels, { a: '1' });
    assert.equal(current.headers.get('etag'), `"${changed.body.revision}"`);
  });

  test('stale If-Match on DELETE is a 412', async () => {
    await registerWorker(coordinator, 'etag-delete');
    const created = await create(routeBody('etag-2', 'web'));
    const etag = `"${created.body.revision}"`;
    await coordinator.api('PATCH', `/routes/${created.body.id}`, { open_to_public: true });
    const stale = await deleteWithEtag(created.body.id, etag);
    assert.equal(stale.status, 412);
    const current = await coordinator.api('GET', `/routes/${created.body.id}`);
    assert.equal(current.status, 200);
    const fresh = await deleteWithEtag(created.body.id, current.headers.get('etag') as string);
    assert.equal(fresh.status, 204);
  });

  test('PATCH sets and removes the idle timeout', async () => {
    await registerWorker(coordinator, 'idle-patch');
    const created = await create(routeBody('idle-patch', 'web'));
    const path = `/routes/${created.body.id}`;
    const set = await coordinator.api('PATCH', path, { idle_timeout_s: 30 });
    assert.equal(set.body.idle_timeout_s, 30);
    assert.ok(set.body.revision > created.body.revision);
    const cleared = await coordinator.api('PATCH', path, { idle_timeout_s: null });
    assert.equal('idle_timeout_s' in cleared.body, false);
    const stored = await coordinator.api('GET', `/routes/${created.body.id}`);
    assert.equal('idle_timeout_s' in stored.body, false);
  });

  async function patchWithEtag(id: string, body: unknown, etag: string) {
    const response = await fetch(`${coordinator.url}/routes/${id}`, {
      method: 'PATCH',
      headers: {
        authorization: `Bearer ${coordinator.tokens.manager}`,
        'content-type': 'application/json',
        'if-match': etag,
      },
      body: JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  }

  async function deleteWithEtag(id: string, etag: string) {
    const response = await fetch(`${coordinator.url}/routes/${id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${coordinator.tokens.manager}`, 'if-match': etag },
    });
    await response.arrayBuffer();
    return { status: response.status };
  }

  test('deleting a session records session_ended', async () => {
    await registerWorker(coordinator, 'ended');
    await create(routeBody('ended-1', 'web'));
    await coordinator.api('DELETE', '/sessions/ended-1/routes');
    const deleted = await eventsOfType(coordinator, 'route.deleted');
    assert.equal(deleted.at(-1).reason, 'session_ended');
  });
});
