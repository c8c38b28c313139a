// Runs the coordinator and configurable-http-proxy side by side on this
// machine: route writes, proxied requests, and coordinator memory. Each figure
// is the median of RUNS runs with min and max, the two systems alternating.
// Stops by itself; writes its section of docs/benchmarks.md.
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import postgres from 'postgres';
import { createTestDatabase } from '../test/helpers/database.ts';
import { freePort, startCoordinatorProcess } from '../test/helpers/processes.ts';
import { ScriptedWorker } from '../test/helpers/scripted-worker.ts';
import {
  ROOT,
  cpuSeconds,
  formatSpread,
  heapAfterGc,
  JsonClient,
  machineFacts,
  postgresCpuSeconds,
  quantile,
  residentBytes,
  runConcurrently,
  spread,
  startChild,
  waitUntil,
  writeSection,
  type Spread,
} from './support.ts';

const ROUTES = Number(process.env.BENCH_ROUTES ?? 10_000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const WORKERS = 10;
const PROXY_SECONDS = Number(process.env.BENCH_PROXY_SECONDS ?? 5);
const MEMORY_WORKERS = Number(process.env.BENCH_MEMORY_WORKERS ?? 500);
const CHP_TOKEN = randomUUID();

/** Builds a typical route body: two backends and three labels, about 300 bytes of JSON. */
function routeBody(sessionId: string) {
  return {
    session_id: sessionId,
    service: 'jupyter',
    backends: [
      { host: '10.20.30.40', port: 8888 },
      { host: '10.20.30.41', port: 8888 },
    ],
    labels: { owner: 'user-0042', project: 'vision-research', tier: 'interactive' },
  };
}

interface WriteFigures {
  ratePerS: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU used per route, in ms: by the server process, by PostgreSQL, and by this process. */
  cpuMs: { server: number; postgres: number; bench: number };
}

/** Writes ROUTES routes, `concurrency` at a time, and measures rate, latency and CPU. */
async function timeWrites(
  concurrency: number,
  serverPid: number | undefined,
  write: (i: number) => Promise<void>,
): Promise<WriteFigures> {
  const serverCpu = () => (serverPid === undefined ? Promise.resolve(0) : cpuSeconds(serverPid));
  const [serverBefore, postgresBefore] = await Promise.all([serverCpu(), postgresCpuSeconds()]);
  const benchBefore = process.cpuUsage();
  const { latenciesMs, elapsedMs } = await runConcurrently(ROUTES, concurrency, write);
  const bench = process.cpuUsage(benchBefore);
  const [serverAfter, postgresAfter] = await Promise.all([serverCpu(), postgresCpuSeconds()]);
  const perRouteMs = (seconds: number) => (seconds * 1000) / ROUTES;
  return {
    ratePerS: (ROUTES / elapsedMs) * 1000,
    p50Ms: quantile(latenciesMs, 0.5),
    p99Ms: quantile(latenciesMs, 0.99),
    cpuMs: {
      server: perRouteMs(serverAfter - serverBefore),
      postgres: perRouteMs(postgresAfter - postgresBefore),
      bench: perRouteMs((bench.user + bench.system) / 1e6),
    },
  };
}

function expectOk(response: { status: number; text: string }, what: string): void {
  if (response.status >= 300) throw new Error(`${what} failed: ${response.status} ${response.text}`);
}

async function main() {
  const loadBefore = os.loadavg()[0];
  const db = await createTestDatabase();
  const coordinator = await startCoordinatorProcess({
    databaseUrl: db.url,
    dataDir: db.dataDir,
    env: { APPPROXY_LOG_LEVEL: 'warn' },
    // The inspector, on loopback, lets the memory figures be read after a full collection.
    nodeArgs: ['--inspect=127.0.0.1:0'],
  });
  const tokens = await coordinator.tokens();
  const managerHeaders = { authorization: `Bearer ${tokens.manager}`, 'content-type': 'application/json' };
  const workers = await connectWorkers(coordinator.url, tokens.worker, WORKERS, 'bench');

  const chpPort = await freePort();
  const chpApiPort = await freePort();
  const chp = startChild(
    path.join(ROOT, 'node_modules', '.bin', 'configurable-http-proxy'),
    ['--ip', '127.0.0.1', '--port', String(chpPort), '--api-ip', '127.0.0.1',
      '--api-port', String(chpApiPort), '--log-level', 'error'],
    { CONFIGPROXY_AUTH_TOKEN: CHP_TOKEN },
  );
  const chpHeaders = { authorization: `token ${CHP_TOKEN}`, 'content-type': 'application/json' };
  await waitUntil('configurable-http-proxy', 15_000, async () => {
    const response = await fetch(`http://127.0.0.1:${chpApiPort}/api/routes`, { headers: chpHeaders });
    return response.status === 200;
  });

  const floorSql = postgres(db.url as string, { max: 1, onnotice: () => {} });
  await floorSql`CREATE TABLE bench_floor (id uuid PRIMARY KEY, body jsonb NOT NULL)`;

  const writes = await measureWrites({
    coordinatorUrl: coordinator.url,
    coordinatorPid: coordinator.child.pid as number,
    managerHeaders,
    chpApiPort,
    chpPid: chp.child.pid as number,
    chpHeaders,
    floorSql,
  });
  const proxy = await measureProxy({ coordinatorUrl: coordinator.url, tokens, managerHeaders, chpApiPort, chpPort, chpHeaders });
  const memory = await measureMemory(coordinator, tokens, managerHeaders);

  await floorSql.end();
  for (const worker of workers) await worker.close();
  chp.child.kill('SIGTERM');
  await coordinator.stop();
  await db.drop();
  await report(loadBefore, writes, proxy, memory);
}

async function connectWorkers(url: string, token: string, count: number, prefix: string) {
  const workers: ScriptedWorker[] = [];
  for (let i = 0; i < count; i++) {
    const worker = new ScriptedWorker({
      coordinatorUrl: url,
      workerToken: token,
      authority: `${prefix}-${i}`,
      mode: 'wildcard',
      wildcardDomain: `.${prefix}-${i}.example.test`,
    });
    await worker.register({ advertised_port: 80 });
    await worker.connect();
    workers.push(worker);
  }
  for (const worker of workers) await worker.waitFor(() => worker.messages.length > 0, 30_000, 'snapshot');
  return workers;
}

async function measureWrites(options: {
  coordinatorUrl: string;
  coordinatorPid: number;
  managerHeaders: Record<string, string>;
  chpApiPort: number;
  chpPid: number;
  chpHeaders: Record<string, string>;
  floorSql: postgres.Sql;
}) {
  const coordinatorClient = new JsonClient(options.managerHeaders);
  const chpClient = new JsonClient(options.chpHeaders);
  const results: Record<string, WriteFigures[]> = {};
  const add = (name: string, figures: WriteFigures) => (results[name] ??= []).push(figures);
  for (let run = 0; run < RUNS; run++) {
    for (const concurrency of [1, 32]) {
      const tag = `${run}-${concurrency}-${randomUUID().slice(0, 8)}`;
      add(`coordinator, ${concurrency} at a time`, await timeWrites(concurrency, options.coordinatorPid, async (i) => {
        const response = await coordinatorClient.request('POST', `${options.coordinatorUrl}/routes`, routeBody(`w${tag}-${i}`));
        expectOk(response, 'POST /routes');
      }));
      add(`configurable-http-proxy, ${concurrency} at a time`, await timeWrites(concurrency, options.chpPid, async (i) => {
        const url = `http://127.0.0.1:${options.chpApiPort}/api/routes/u/${tag}-${i}`;
        expectOk(await chpClient.request('POST', url, { target: 'http://10.20.30.40:8888' }), 'POST /api/routes');
      }));
      // The HTTP floor of the coordinator: a body that fails validation, so no database work.
      add(`coordinator, invalid body (HTTP only), ${concurrency} at a time`, await timeWrites(concurrency, options.coordinatorPid, async () => {
        const response = await coordinatorClient.request('POST', `${options.coordinatorUrl}/routes`, { session_id: 5 });
        if (response.status !== 400) throw new Error(`invalid POST /routes returned ${response.status}: ${response.text}`);
      }));
    }
    add('bare INSERT, 1 at a time', await timeWrites(1, undefined, async () => {
      await options.floorSql`INSERT INTO bench_floor VALUES (${randomUUID()}, ${JSON.stringify(routeBody('x'))}::text::jsonb)`;
    }));
  }
  coordinatorClient.close();
  chpClient.close();
  return results;
}

async function measureProxy(options: {
  coordinatorUrl: string;
  tokens: { manager: string; worker: string };
  managerHeaders: Record<string, string>;
  chpApiPort: number;
  chpPort: number;
  chpHeaders: Record<string, string>;
}) {
  const backendPort = await freePort();
  const backend = startChild(process.execPath, ['-e',
    `require('http').createServer((q, s) => s.end('hello from the backend\\n')).listen(${backendPort}, '127.0.0.1')`]);
  const firstPort = await freePort();
  const worker = startChild(path.join(ROOT, 'bin', 'appproxy-worker'), [
    '--authority', 'bench-proxy', '--mode', 'port', '--port-range', `${firstPort}-${firstPort}`,
    '--log-level', 'warn',
  ], { APPPROXY_COORDINATOR_URL: options.coordinatorUrl, APPPROXY_WORKER_TOKEN: options.tokens.worker });
  let workerId = '';
  await waitUntil('reference worker', 20_000, async () => {
    const response = await fetch(`${options.coordinatorUrl}/workers`, { headers: options.managerHeaders });
    const found = (await response.json()).workers.find((w: any) => w.authority === 'bench-proxy' && w.connected);
    workerId = found?.id ?? '';
    return workerId !== '';
  });
  const created = await fetch(`${options.coordinatorUrl}/routes?wait=applied&timeout_ms=10000`, {
    method: 'POST',
    headers: options.managerHeaders,
    body: JSON.stringify({ session_id: 'bench-proxy', service: 'web', worker_id: workerId,
      backends: [{ host: '127.0.0.1', port: backendPort }] }),
  });
  const route = await created.json();
  const chpRoute = await fetch(`http://127.0.0.1:${options.chpApiPort}/api/routes/`, {
    method: 'POST', headers: options.chpHeaders, body: JSON.stringify({ target: `http://127.0.0.1:${backendPort}` }),
  });
  expectOk({ status: chpRoute.status, text: await chpRoute.text() }, 'CHP route');
  await waitUntil('route served by the worker', 10_000, async () => (await fetch(route.url)).status === 200);

  const targets = {
    'reference worker': route.url,
    'configurable-http-proxy': `http://127.0.0.1:${options.chpPort}/`,
    'backend directly': `http://127.0.0.1:${backendPort}/`,
  };
  const results: Record<string, Array<{ rate: number; p99: number }>> = {};
  for (let run = 0; run < RUNS; run++) {
    for (const [name, url] of Object.entries(targets)) {
      const result = await autocannon({ url, connections: 50, duration: PROXY_SECONDS });
      (results[name] ??= []).push({ rate: result.requests.average, p99: result.latency.p99 });
    }
  }
  worker.child.kill('SIGTERM');
  backend.child.kill('SIGTERM');
  return results;
}

/** Coordinator memory: live heap and buffers after a full collection, and resident set. */
interface MemoryReading {
  live: number;
  resident: number;
}

async function readMemory(coordinator: Awaited<ReturnType<typeof startCoordinatorProcess>>): Promise<MemoryReading> {
  const heap = await heapAfterGc(coordinator.output);
  return { live: heap.heapUsed + heap.external, resident: await residentBytes(coordinator.child.pid as number) };
}

async function measureMemory(
  coordinator: Awaited<ReturnType<typeof startCoordinatorProcess>>,
  tokens: { worker: string },
  managerHeaders: Record<string, string>,
) {
  const settle = () => new Promise((resolve) => setTimeout(resolve, 2000));
  await settle();
  const before = await readMemory(coordinator);
  const extra = await connectWorkers(coordinator.url, tokens.worker, MEMORY_WORKERS, 'mem');
  await settle();
  const afterWorkers = await readMemory(coordinator);
  const client = new JsonClient(managerHeaders);
  await runConcurrently(ROUTES, 32, async (i) => {
    expectOk(await client.request('POST', `${coordinator.url}/routes`, routeBody(`mem-${i}`)), 'POST /routes');
  });
  client.close();
  await settle();
  const afterRoutes = await readMemory(coordinator);
  for (const worker of extra) await worker.close();
  const per = (from: MemoryReading, to: MemoryReading, count: number) => ({
    live: (to.live - from.live) / count,
    resident: (to.resident - from.resident) / count,
  });
  return { perWorker: per(before, afterWorkers, MEMORY_WORKERS), perRoute: per(afterWorkers, afterRoutes, ROUTES) };
}

function kib(bytes: number): string {
  return (bytes / 1024).toFixed(2);
}

async function report(
  loadBefore: number,
  writes: Record<string, WriteFigures[]>,
  proxy: Record<string, Array<{ rate: number; p99: number }>>,
  memory: Awaited<ReturnType<typeof measureMemory>>,
) {
  const lines = [
    '## Compared with configurable-http-proxy',
    '',
    `Machine: ${machineFacts()}. One-minute load average ${loadBefore.toFixed(2)} before the run; ` +
      'other work on the machine shows in every figure.',
    `Command: \`make bench-compare\` (${ROUTES} routes per run, ${RUNS} runs, ${WORKERS} workers ` +
      `connected and acknowledging; proxy runs of ${PROXY_SECONDS} s with 50 connections). ` +
      'Each cell: median (min–max) over the runs, the systems alternating within each run.',
    '',
    '### Route writes',
    '',
    'CPU columns: CPU time per route, in ms, used by the server process, by all PostgreSQL ' +
      'processes, and by the benchmark process (the HTTP client and, for the coordinator, the ' +
      `${WORKERS} workers receiving and acknowledging every route), read from /proc.`,
    '',
    '| writer | routes/s | p50 ms | p99 ms | CPU server | CPU PostgreSQL | CPU bench |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const [name, runs] of Object.entries(writes)) {
    const row = (pick: (f: WriteFigures) => number, digits: number) => formatSpread(spread(runs.map(pick)), digits);
    lines.push(
      `| ${name} | ${row((f) => f.ratePerS, 0)} | ${row((f) => f.p50Ms, 2)} | ${row((f) => f.p99Ms, 2)} ` +
        `| ${row((f) => f.cpuMs.server, 3)} | ${row((f) => f.cpuMs.postgres, 3)} | ${row((f) => f.cpuMs.bench, 3)} |`,
    );
  }
  lines.push('', '### Proxied requests', '', '| path | requests/s | p99 ms |', '|---|---|---|');
  for (const [name, runs] of Object.entries(proxy)) {
    lines.push(`| ${name} | ${formatSpread(spread(runs.map((r) => r.rate)))} | ${formatSpread(spread(runs.map((r) => r.p99)))} |`);
  }
  const ratio = (a: Spread, b: Spread) => a.median / b.median;
  const rates = (name: string) => spread(writes[name].map((f) => f.ratePerS));
  const proxyRates = (name: string) => spread(proxy[name].map((r) => r.rate));
  const verdict = (isMet: boolean) => (isMet ? 'met' : 'missed');
  const writes32 = ratio(rates('coordinator, 32 at a time'), rates('configurable-http-proxy, 32 at a time'));
  const writes1 = ratio(rates('coordinator, 1 at a time'), rates('bare INSERT, 1 at a time'));
  const proxied = ratio(proxyRates('reference worker'), proxyRates('configurable-http-proxy'));
  lines.push(
    '',
    '### Coordinator memory',
    '',
    'Live: growth of heap in use plus buffers after two full collections, read through the inspector. ' +
      'Resident: growth of the resident set, which also counts freed memory the allocator keeps.',
    '',
    '| per | live KiB | resident KiB |',
    '|---|---|---|',
    `| connected worker (${MEMORY_WORKERS} more) | ${kib(memory.perWorker.live)} | ${kib(memory.perWorker.resident)} |`,
    `| route (${ROUTES} more; routes live in PostgreSQL) | ${kib(memory.perRoute.live)} | ${kib(memory.perRoute.resident)} |`,
    '',
    '### Targets (medians of this run)',
    '',
    '| target | measured | verdict |',
    '|---|---|---|',
    `| route writes, 32 at a time, at least configurable-http-proxy's rate | ${writes32.toFixed(2)}× | ${verdict(writes32 >= 1)} |`,
    `| route writes, 1 at a time, at least 60% of bare INSERTs | ${writes1.toFixed(2)}× | ${verdict(writes1 >= 0.6)} |`,
    `| proxied requests, at least 1.5× configurable-http-proxy | ${proxied.toFixed(2)}× | ${verdict(proxied >= 1.5)} |`,
    `| coordinator memory per route under 1 KiB | ${kib(memory.perRoute.live)} KiB live | ${verdict(memory.perRoute.live < 1024)} |`,
    `| coordinator memory per connected worker under 32 KiB | ${kib(memory.perWorker.live)} KiB live | ${verdict(memory.perWorker.live < 32 * 1024)} |`,
  );
  const markdown = lines.join('\n');
  console.log(markdown);
  await writeSection('compare', markdown);
}

await main();
