import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  connectedWorker,
  listAll,
  routeBody,
  waitInSync,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

describe('route filters and freed ports', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;
  const ids: Record<'a' | 'b' | 'c', string> = { a: '', b: '', c: '' };
  let portB = 0;

  before(async () => {
    coordinator = await startCaseCoordinator();
    worker = await connectedWorker(coordinator, { authority: 'proxy-a' });
    const specs = {
      a: ['s1', 'lab', '192.0.2.50:8000'],
      b: ['s1', 'lab2', '192.0.2.51:8000'],
      c: ['s10', 'lab', '192.0.2.52:8000'],
    };
    for (const [key, [session, service, backend]] of Object.entries(specs)) {
      const body = routeBody(session, service, backend);
      const created = await coordinator.api('POST', '/routes', body);
      assert.equal(created.status, 201);
      ids[key as keyof typeof ids] = created.body.id;
      if (key === 'b') portB = created.body.port;
    }
    await worker.waitFor(() => worker.table.size === 3, 2000, 'three routes');
    await waitInSync(coordinator.api, worker.id);
  });
  after(async () => {
    worker?.kill();
    await coordinator?.stop();
  });

  async function idsAt(urlPath: string): Promise<string[]> {
    const response = await coordinator.api('GET', urlPath);
    assert.equal(response.status, 200);
    return response.body.routes.map((r: any) => r.id).sort();
  }

  test('filters match whole values only', async () => {
    const { a, b, c } = ids;
    assert.deepEqual(await idsAt('/sessions/s1/routes'), [a, b].sort());
    assert.deepEqual(await idsAt('/routes?session_id=s1'), [a, b].sort());
    assert.deepEqual(await idsAt('/routes?service=lab'), [a, c].sort());
    assert.deepEqual(await idsAt('/routes?session_id=s1&service=lab'), [a]);
  });

  test('deleted route frees its port', async () => {
    const before = await coordinator.api('GET', `/workers/${worker.id}`);
    assert.equal((await coordinator.api('DELETE', `/routes/${ids.b}`)).status, 204);
    await worker.waitFor(() => !worker.table.has(ids.b), 1000, 'B removed');
    assert.ok(![...worker.table.values()].some((route) => route.port === portB));
    const after = await coordinator.api('GET', `/workers/${worker.id}`);
    assert.equal(after.body.route_count, before.body.route_count - 1);
    const listed = await listAll(coordinator.api, `/routes?worker_id=${worker.id}`);
    assert.deepEqual(listed.map((r) => r.id).sort(), [ids.a, ids.c].sort());

    const body = routeBody('s2', 'lab', '192.0.2.53:8000', { worker_id: worker.id, port: portB });
    const created = await coordinator.api('POST', '/routes', body);
    assert.equal(created.status, 201);
    assert.equal(created.body.port, portB);
    assert.equal(created.body.url, `http://proxy-a.example.test:${portB}`);
    await worker.waitFor(() => worker.table.has(created.body.id), 1000, 'the new route');
    const onPort = [...worker.table.values()].filter((route) => route.port === portB);
    assert.equal(onPort.length, 1);
    assert.deepEqual(onPort[0].backends.map((b) => `${b.host}:${b.port}`), ['192.0.2.53:8000']);
  });
});
