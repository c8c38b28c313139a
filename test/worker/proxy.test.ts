import assert from 'node:assert/strict';
import net from 'node:net';
import { after, afterEach, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { tableDigest } from '../../proto/index.ts';
import { WorkerProxy } from '../../src/worker/proxy.ts';
import { pickBackend, subdomainOf } from '../../src/worker/routing.ts';
import { RouteTable, type WireRoute } from '../../src/worker/table.ts';
import {
  freePort,
  httpGet,
  LOOPBACK,
  makeRoute,
  startHttpBackend,
  startTcpEcho,
  tcpExchange,
  tryConnect,
  waitFor,
  webSocketEcho,
  withTimeout,
  type TestServer,
} from './helpers.ts';

const DOMAIN = '.apps.example.test';

let revision = 0;

/** Replaces the table's content with `routes` through a snapshot, as the agent would. */
function load(table: RouteTable, routes: WireRoute[]): void {
  revision += 1;
  const result = table.applySnapshot({
    epoch: 'epoch-a',
    revision,
    routes,
    digest: tableDigest(routes),
  });
  assert.equal(result.status, 'applied');
}

function backendAt(port: number, weight = 1) {
  return { host: LOOPBACK, port, weight };
}

describe('WorkerProxy in port mode', () => {
  let httpBackend: TestServer;
  let tcpBackend: TestServer;
  let table: RouteTable;
  let proxy: WorkerProxy;

  before(async () => {
    httpBackend = await startHttpBackend('alpha');
    tcpBackend = await startTcpEcho();
  });

  after(async () => {
    await httpBackend.close();
    await tcpBackend.close();
  });

  async function startProxy(routes: WireRoute[]): Promise<void> {
    table = new RouteTable();
    load(table, routes);
    proxy = new WorkerProxy({ table, mode: 'port', listenHost: LOOPBACK });
    await withTimeout(proxy.start(), 5_000, 'proxy start');
  }

  afterEach(async () => {
    await withTimeout(proxy.close(), 5_000, 'proxy close');
  });

  test('proxy forwards HTTP GET to backend', async () => {
    const port = await freePort();
    await startProxy([makeRoute({ port, backends: [backendAt(httpBackend.port)] })]);

    const response = await httpGet(port, '/lab?x=1', { host: 'worker.test:9' });
    assert.equal(response.status, 200);
    assert.equal(response.body, 'alpha GET /lab?x=1');
    assert.equal(response.headers['x-seen-host'], 'worker.test:9');
    assert.equal(response.headers['x-seen-forwarded-for'], LOOPBACK);
  });

  test('proxy forwards WebSocket echo', async () => {
    const port = await freePort();
    await startProxy([makeRoute({ port, backends: [backendAt(httpBackend.port)] })]);

    const reply = await webSocketEcho(`ws://${LOOPBACK}:${port}/terminals/1`, 'hello');
    assert.equal(reply, 'alpha:hello');
  });

  test('proxy pipes TCP to backend', async () => {
    const port = await freePort();
    const route = makeRoute({ port, protocol: 'tcp', backends: [backendAt(tcpBackend.port)] });
    await startProxy([route]);

    assert.equal(await tcpExchange(port, 'ping over tcp'), 'ping over tcp');
  });

  test('unrouted port refuses connections', async () => {
    const routed = await freePort();
    const unrouted = await freePort();
    await startProxy([makeRoute({ port: routed, backends: [backendAt(httpBackend.port)] })]);

    assert.equal(await tryConnect(unrouted), 'ECONNREFUSED');
    assert.equal(await tryConnect(routed), 'connected');
  });

  test('removed route closes its listener', async () => {
    const port = await freePort();
    await startProxy([makeRoute({ port, backends: [backendAt(httpBackend.port)] })]);
    assert.deepEqual(proxy.listeningPorts(), [port]);

    load(table, []);
    await proxy.settled();
    assert.deepEqual(proxy.listeningPorts(), []);
    assert.equal(await tryConnect(port), 'ECONNREFUSED');
  });

  test('added route opens a listener', async () => {
    await startProxy([]);
    const port = await freePort();

    load(table, [makeRoute({ port, backends: [backendAt(httpBackend.port)] })]);
    await proxy.settled();
    const response = await httpGet(port, '/');
    assert.equal(response.status, 200);
  });

  test('refusing backend gives 502', async () => {
    const port = await freePort();
    const deadPort = await freePort();
    await startProxy([makeRoute({ port, backends: [backendAt(deadPort)] })]);
    const errors: string[] = [];
    proxy.on('backendError', ({ backend }) => errors.push(backend));

    const response = await httpGet(port, '/');
    assert.equal(response.status, 502);
    assert.match(response.body, /^Bad gateway/);
    assert.deepEqual(errors, [`${LOOPBACK}:${deadPort}`]);
  });

  test('refusing backend fails WebSocket upgrade with 502', async () => {
    const port = await freePort();
    const deadPort = await freePort();
    await startProxy([makeRoute({ port, backends: [backendAt(deadPort)] })]);

    await assert.rejects(webSocketEcho(`ws://${LOOPBACK}:${port}/`, 'x'), /502/);
  });

  test('allowed_client_ips outside gives 403', async () => {
    const port = await freePort();
    const backends = [backendAt(httpBackend.port)];
    await startProxy([makeRoute({ port, backends, allowed_client_ips: ['10.0.0.0/8'] })]);

    const response = await httpGet(port, '/');
    assert.equal(response.status, 403);
    assert.match(response.body, /^Forbidden/);
  });

  test('allowed_client_ips inside passes', async () => {
    const port = await freePort();
    const backends = [backendAt(httpBackend.port)];
    const allowed = ['10.0.0.0/8', '127.0.0.0/8'];
    await startProxy([makeRoute({ port, backends, allowed_client_ips: allowed })]);

    const response = await httpGet(port, '/');
    assert.equal(response.status, 200);
  });

  test('allowed_client_ips outside closes TCP', async () => {
    const port = await freePort();
    const backends = [backendAt(tcpBackend.port)];
    const allowed = ['192.0.2.0/24'];
    await startProxy([makeRoute({ port, protocol: 'tcp', backends, allowed_client_ips: allowed })]);

    assert.equal(await tcpExchange(port, 'ping'), '');
  });

  test('removed route closes open TCP connections', async () => {
    const port = await freePort();
    const backends = [backendAt(tcpBackend.port)];
    await startProxy([makeRoute({ port, protocol: 'tcp', backends })]);
    const exchange = new Promise<string>((resolve) => {
      const socket = net.connect({ host: LOOPBACK, port });
      socket.once('data', () => {
        load(table, []);
      });
      socket.on('close', () => resolve('closed'));
      socket.on('error', () => {});
      socket.write('x');
    });

    assert.equal(await withTimeout(exchange, 5_000, 'TCP close after route removal'), 'closed');
  });

  test('stats report activity and connections', async () => {
    const port = await freePort();
    const route = makeRoute({ port, backends: [backendAt(httpBackend.port)] });
    await startProxy([route]);
    assert.deepEqual(proxy.collectStats(), { routes: [], connections: 0 });

    await httpGet(port, '/');
    const stats = proxy.collectStats();
    assert.deepEqual(stats.routes?.map((item) => item.id), [route.id]);
    assert.deepEqual(proxy.collectStats().routes, []);
  });

  test('close stops all listeners', async () => {
    const port = await freePort();
    await startProxy([makeRoute({ port, backends: [backendAt(httpBackend.port)] })]);

    await proxy.close();
    assert.equal(await tryConnect(port), 'ECONNREFUSED');
  });
});

describe('WorkerProxy in wildcard mode', () => {
  let alpha: TestServer;
  let beta: TestServer;
  let table: RouteTable;
  let proxy: WorkerProxy;
  let port: number;

  before(async () => {
    alpha = await startHttpBackend('alpha');
    beta = await startHttpBackend('beta');
    table = new RouteTable();
    load(table, [
      makeRoute({ subdomain: 'jupyter-s1', backends: [backendAt(alpha.port)] }),
      makeRoute({ subdomain: 'tensorboard-s1', backends: [backendAt(beta.port)] }),
    ]);
    proxy = new WorkerProxy({
      table,
      mode: 'wildcard',
      listenHost: LOOPBACK,
      wildcardDomain: DOMAIN,
    });
    await withTimeout(proxy.start(), 5_000, 'proxy start');
    port = proxy.wildcardPort ?? 0;
  });

  after(async () => {
    await proxy.close();
    await alpha.close();
    await beta.close();
  });

  test('routes by subdomain of Host header', async () => {
    const first = await httpGet(port, '/a', { host: `jupyter-s1${DOMAIN}:8080` });
    const second = await httpGet(port, '/b', { host: `TensorBoard-S1${DOMAIN}` });

    assert.equal(first.body, 'alpha GET /a');
    assert.equal(second.body, 'beta GET /b');
  });

  test('unknown wildcard host gives 404', async () => {
    const unknown = await httpGet(port, '/', { host: `missing${DOMAIN}` });
    const foreign = await httpGet(port, '/', { host: 'jupyter-s1.other.test' });

    assert.equal(unknown.status, 404);
    assert.match(unknown.body, /^Not found/);
    assert.equal(foreign.status, 404);
  });

  test('WebSocket upgrade routes by host', async () => {
    const url = `ws://${LOOPBACK}:${port}/socket`;
    const reply = await webSocketEcho(url, 'hi', `tensorboard-s1${DOMAIN}`);

    assert.equal(reply, 'beta:hi');
  });

  test('unknown host fails WebSocket upgrade with 404', async () => {
    const url = `ws://${LOOPBACK}:${port}/socket`;

    await assert.rejects(webSocketEcho(url, 'hi', `missing${DOMAIN}`), /404/);
  });

  test('removed route closes its WebSockets', async () => {
    const route = makeRoute({ subdomain: 'vscode-s2', backends: [backendAt(alpha.port)] });
    load(table, [...table.routes(), route]);
    const socket = new WebSocket(`ws://${LOOPBACK}:${port}/`, {
      headers: { host: `vscode-s2${DOMAIN}` },
    });
    await withTimeout(new Promise((resolve) => socket.once('open', resolve)), 5_000, 'open');
    const closed = new Promise((resolve) => socket.once('close', resolve));

    load(table, [...table.routes()].filter((item) => item.id !== route.id));
    await withTimeout(closed, 5_000, 'WebSocket close after route removal');
    await waitFor(() => proxy.collectStats().connections === 0, 2_000, 'no connections');
  });
});

describe('routing helpers', () => {
  test('pickBackend follows weights', () => {
    const backends = [backendAt(1, 1), backendAt(2, 3)];

    assert.equal(pickBackend(backends, () => 0)?.port, 1);
    assert.equal(pickBackend(backends, () => 0.24)?.port, 1);
    assert.equal(pickBackend(backends, () => 0.26)?.port, 2);
    assert.equal(pickBackend(backends, () => 0.999)?.port, 2);
    assert.equal(pickBackend([], () => 0.5), undefined);
  });

  test('subdomainOf takes exactly one label', () => {
    assert.equal(subdomainOf(`a-b${DOMAIN}`, DOMAIN), 'a-b');
    assert.equal(subdomainOf(`A-B${DOMAIN}.:443`, DOMAIN), 'a-b');
    assert.equal(subdomainOf(`x.a-b${DOMAIN}`, DOMAIN), undefined);
    assert.equal(subdomainOf(DOMAIN.slice(1), DOMAIN), undefined);
    assert.equal(subdomainOf('[::1]:80', DOMAIN), undefined);
    assert.equal(subdomainOf(undefined, DOMAIN), undefined);
  });
});
