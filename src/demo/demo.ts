import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import type { Route, Worker } from '../../proto/index.ts';
import { CoordinatorClient, errorCode } from '../cli/client.ts';
import { ProblemError } from '../cli/errors.ts';
import { createPalette, type Palette, shouldUseColor } from '../cli/format.ts';
import { type SampleBackend, startSampleBackend } from './backend.ts';
import { describeExit, type ManagedChild, startChild, stopChild } from './processes.ts';
import { pollUntil, withTimeout } from './wait.ts';

// The end-to-end demo behind `make demo`: a coordinator on its embedded database, one reference
// worker in port mode and a sample backend, all on 127.0.0.1, then one route through them.
// Pass --verbose to see the logs of the coordinator and the worker as they run.

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const HOST = '127.0.0.1';
const SESSION_ID = 'demo-session';
const SERVICE = 'jupyter';
const WORKER_AUTHORITY = 'demo';

// Bounds of each step. Starting the coordinator includes creating the embedded database.
const COORDINATOR_START_MS = 60_000;
const WORKER_START_MS = 30_000;
const ROUTE_ACTIVE_MS = 15_000;
const REQUEST_MS = 10_000;
const STOP_MS = 10_000;

interface DemoState {
  palette: Palette;
  isVerbose: boolean;
  isInterrupted: boolean;
  tempDir?: string;
  backend?: SampleBackend;
  children: ManagedChild[];
}

/** The running coordinator and a client holding its manager token. */
interface Coordinator {
  url: string;
  manager: CoordinatorClient;
}

async function main(): Promise<number> {
  const state: DemoState = {
    palette: createPalette(shouldUseColor(process.stdout, process.env)),
    isVerbose: process.argv.includes('--verbose'),
    isInterrupted: false,
    children: [],
  };
  const cleanUpOnSignal = (signal: NodeJS.Signals) => {
    state.isInterrupted = true;
    process.stderr.write(`\nReceived ${signal}; stopping the demo.\n`);
    void cleanUp(state).finally(() => process.exit(130));
  };
  process.once('SIGINT', cleanUpOnSignal);
  process.once('SIGTERM', cleanUpOnSignal);

  try {
    await runDemo(state);
    await cleanUp(state);
    console.log(`\n${state.palette.green('Demo finished.')}`);
    return 0;
  } catch (error) {
    // After a signal, steps fail because their processes stopped; that is no news.
    if (!state.isInterrupted) reportFailure(state, error);
    await cleanUp(state);
    return 1;
  }
}

async function runDemo(state: DemoState): Promise<void> {
  state.tempDir = await mkdtemp(path.join(tmpdir(), 'appproxy-demo-'));
  const backend = await startBackend(state);
  const coordinator = await startCoordinator(state);
  await startWorker(state, coordinator);
  const route = await createRoute(state, coordinator, backend);

  await showCli(state, coordinator, ['routes']);
  await showCli(state, coordinator, ['status']);
  await fetchThroughWorker(state, route);
  await echoThroughWorker(state, route);
  await endSession(state, coordinator, route);
  await showEventHistory(state, coordinator);
}

function step(state: DemoState, title: string): void {
  console.log(`\n${state.palette.bold(`==> ${title}`)}`);
}

function detail(text: string): void {
  for (const line of text.split('\n')) console.log(`    ${line}`);
}

async function startBackend(state: DemoState): Promise<SampleBackend> {
  step(state, 'Starting the sample backend (stands in for a Jupyter server in a session)');
  state.backend = await startSampleBackend({ host: HOST, port: 0, name: 'sample backend' });
  detail(`listening on ${HOST}:${state.backend.port}`);
  return state.backend;
}

async function startCoordinator(state: DemoState): Promise<Coordinator> {
  const port = await findFreePort();
  const url = `http://${HOST}:${port}`;
  step(state, `Starting the coordinator at ${url} on its embedded database`);
  const args = ['--host', HOST, '--port', String(port), '--data-dir', state.tempDir!];
  const child = launch(state, 'coordinator', 'appproxy-coordinator', args);

  const health = await pollUntil(
    `waiting for GET ${url}/health to return 200`,
    () => fetchHealth(url),
    { timeoutMs: COORDINATOR_START_MS, watched: [child] },
  );
  detail(`healthy: revision ${health.revision}, epoch ${health.epoch}`);
  const token = await readManagerToken(state.tempDir!, child);
  detail(`tokens written to ${path.join(state.tempDir!, 'tokens.json')}`);
  return { url, manager: new CoordinatorClient(new URL(url), token, REQUEST_MS) };
}

async function fetchHealth(url: string): Promise<{ revision: number; epoch: string } | undefined> {
  const response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2_000) });
  if (response.status !== 200) return undefined;
  return (await response.json()) as { revision: number; epoch: string };
}

async function readManagerToken(dataDir: string, child: ManagedChild): Promise<string> {
  const file = path.join(dataDir, 'tokens.json');
  return pollUntil(
    `waiting for ${file} to hold a manager token`,
    async () => {
      const tokens = JSON.parse(await readFile(file, 'utf8')) as { manager?: string };
      return tokens.manager?.split(',')[0];
    },
    { timeoutMs: 5_000, watched: [child] },
  );
}

async function startWorker(state: DemoState, coordinator: Coordinator): Promise<Worker> {
  // A port free right now, so the demo runs beside another worker, such as the README's.
  const port = await findFreePort();
  const portRange = `${port}-${port}`;
  step(state, `Starting the reference worker "${WORKER_AUTHORITY}" (port mode, ${portRange})`);
  const args = [
    ...['--coordinator-url', coordinator.url, '--data-dir', state.tempDir!],
    ...['--authority', WORKER_AUTHORITY, '--mode', 'port', '--port-range', portRange],
    ...['--hostname', HOST, '--listen-host', HOST],
  ];
  const child = launch(state, 'worker', 'appproxy-worker', args);

  const worker = await pollUntil(
    `waiting for worker "${WORKER_AUTHORITY}" to register and connect`,
    async () => {
      const { workers } = await coordinator.manager.get<{ workers: Worker[] }>('/workers');
      const found = workers.find((item) => item.authority === WORKER_AUTHORITY);
      return found?.status === 'alive' && found.connected ? found : undefined;
    },
    { timeoutMs: WORKER_START_MS, watched: state.children },
  );
  detail(`registered as ${worker.id}, connected (pid ${child.process.pid})`);
  return worker;
}

async function createRoute(
  state: DemoState,
  coordinator: Coordinator,
  backend: SampleBackend,
): Promise<Route> {
  step(state, `Creating the route of ${SESSION_ID}/${SERVICE}: POST /routes`);
  const body = {
    session_id: SESSION_ID,
    service: SERVICE,
    backends: [{ host: HOST, port: backend.port }],
  };
  const created = await postRoute(coordinator.manager, body);
  detail(`created route ${created.id} on port ${created.port}`);

  const route = await pollUntil(
    `waiting for route ${created.id} to become active (acknowledged by the worker)`,
    async () => {
      const current = await coordinator.manager.get<Route>(`/routes/${created.id}`);
      return current.status === 'active' ? current : undefined;
    },
    { timeoutMs: ROUTE_ACTIVE_MS, intervalMs: 100, watched: state.children },
  );
  detail(`active at revision ${route.revision}: ${route.url} → ${HOST}:${backend.port}`);
  return route;
}

/**
 * Creates the route, asking the coordinator to respond once the worker has applied it. A
 * coordinator that does not know `wait` rejects the query with 400; creating again is safe,
 * because the same session, service and spec return the existing route.
 */
async function postRoute(client: CoordinatorClient, body: object): Promise<Route> {
  try {
    const query = { wait: 'applied', timeout_ms: 5_000 };
    return (await client.request<Route>('POST', '/routes', { body, query })).body;
  } catch (error) {
    if (!(error instanceof ProblemError && error.status === 400)) throw error;
    return (await client.request<Route>('POST', '/routes', { body })).body;
  }
}

async function showCli(state: DemoState, coordinator: Coordinator, args: string[]): Promise<void> {
  step(state, `What an operator sees: appproxy ${args.join(' ')}`);
  const env = { ...childEnv(), APPPROXY_COORDINATOR_URL: coordinator.url };
  const cli = startChild({
    name: `appproxy ${args[0]}`,
    command: path.join(ROOT, 'bin', 'appproxy'),
    args: args,
    env: { ...env, APPPROXY_DATA_DIR: state.tempDir! },
    isEchoed: false,
  });
  const status = await withTimeout(`running appproxy ${args[0]}`, REQUEST_MS, cli.exited);
  detail(cli.recentOutput().join('\n'));
  if (status.code !== 0) {
    throw new Error(`appproxy ${args.join(' ')} failed (${describeExit(status)})`);
  }
}

async function fetchThroughWorker(state: DemoState, route: Route): Promise<void> {
  const url = userUrl(route, '/lab?from=demo');
  step(state, `Opening ${url} through the worker, as a user would`);
  const response = await pollUntil(
    `waiting for ${url} to respond`,
    () => fetch(url, { signal: AbortSignal.timeout(2_000) }),
    { timeoutMs: REQUEST_MS, watched: state.children },
  );
  const text = await response.text();
  detail(`HTTP ${response.status} ${response.statusText}\n${text.trimEnd()}`);
  if (response.status !== 200) throw new Error(`GET ${url} returned ${response.status}`);
}

async function echoThroughWorker(state: DemoState, route: Route): Promise<void> {
  const url = userUrl(route, '/echo');
  url.protocol = 'ws:';
  step(state, `Sending a WebSocket message through ${url}`);
  const socket = new WebSocket(url);
  try {
    await withTimeout(`opening ${url}`, REQUEST_MS, once(socket, 'open'));
    const message = 'hello through the app proxy';
    const reply = withTimeout(
      `waiting for the echo from ${url}`,
      REQUEST_MS,
      once(socket, 'message'),
    );
    socket.send(message);
    detail(`sent:     ${message}\nreceived: ${String(await reply)}`);
  } finally {
    socket.terminate();
  }
}

async function endSession(state: DemoState, coordinator: Coordinator, route: Route) {
  step(state, `Ending the session: DELETE /sessions/${SESSION_ID}/routes`);
  const path = `/sessions/${SESSION_ID}/routes`;
  const { body } = await coordinator.manager.request<{ deleted: number }>('DELETE', path);
  detail(`deleted ${body.deleted} route(s)`);

  const url = userUrl(route, '/');
  await pollUntil(
    `waiting for the worker to stop listening on ${url}`,
    async () => {
      const error = await fetch(url, { signal: AbortSignal.timeout(2_000) }).then(
        () => undefined,
        (failure: unknown) => failure,
      );
      return errorCode(error) === 'ECONNREFUSED' ? true : undefined;
    },
    { timeoutMs: REQUEST_MS, watched: state.children },
  );
  detail(`${url} now refuses connections`);
}

async function showEventHistory(state: DemoState, coordinator: Coordinator): Promise<void> {
  step(state, 'The history of all this: appproxy tail --since 0 (stopped with SIGTERM)');
  const tail = startChild({
    name: 'appproxy tail',
    command: path.join(ROOT, 'bin', 'appproxy'),
    args: ['tail', '--since', '0'],
    env: {
      ...childEnv(),
      APPPROXY_COORDINATOR_URL: coordinator.url,
      APPPROXY_DATA_DIR: state.tempDir!,
    },
    isEchoed: false,
  });
  await pollUntil(
    'waiting for appproxy tail to print the route.deleted event',
    async () =>
      tail.recentOutput().some((line) => line.includes('route.deleted')) ? true : undefined,
    { timeoutMs: REQUEST_MS, watched: [tail] },
  ).finally(() => stopChild(tail, STOP_MS));
  const status = await tail.exited;
  detail(tail.recentOutput().join('\n'));
  if (status.code !== 0) throw new Error(`appproxy tail exited with ${describeExit(status)}`);
}

/** Builds the URL a user would open, checked to point at this machine only. */
function userUrl(route: Route, pathAndQuery: string): URL {
  const url = new URL(pathAndQuery, route.url);
  if (url.hostname !== HOST) {
    throw new Error(`Route URL ${route.url} is not on ${HOST}; the demo only sends traffic there`);
  }
  return url;
}

function launch(state: DemoState, name: string, executable: string, args: string[]) {
  const child = startChild({
    name,
    command: path.join(ROOT, 'bin', executable),
    args,
    env: childEnv(),
    isEchoed: state.isVerbose,
  });
  state.children.push(child);
  return child;
}

/**
 * Builds the environment of the demo's processes: without DATABASE_URL, so the coordinator uses its
 * embedded database, and without APPPROXY_* settings such as tokens, which would not match the
 * fresh data directory.
 */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key !== 'DATABASE_URL' && !key.startsWith('APPPROXY_')) env[key] = value;
  }
  return env;
}

function once(socket: WebSocket, event: 'open' | 'message'): Promise<unknown> {
  return new Promise((resolve, reject) => {
    socket.once(event, resolve);
    socket.once('error', reject);
    socket.once('close', (code) => reject(new Error(`WebSocket closed with code ${code}`)));
  });
}

async function findFreePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function reportFailure(state: DemoState, error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`\n${state.palette.red('Demo failed:')} ${message}\n`);
  for (const child of state.children) {
    const lines = child.recentOutput().slice(-FAILURE_LOG_LINES).map(summarizeLogLine);
    if (lines.length === 0) continue;
    process.stderr.write(`\nLast log lines of the ${child.name}:\n${lines.join('\n')}\n`);
  }
  if (!state.isVerbose) process.stderr.write('\nRun with --verbose to see every log line.\n');
}

// Enough lines to show the cause of a failure; --verbose shows them all.
const FAILURE_LOG_LINES = 12;
const PINO_LEVELS: Record<number, string> = { 20: 'debug', 30: 'info', 40: 'warn', 50: 'error' };

/** Shortens a pino JSON line to `level message: error`; other lines pass unchanged. */
function summarizeLogLine(line: string): string {
  let entry: { level?: number; msg?: string; err?: { message?: string } };
  try {
    entry = JSON.parse(line) as typeof entry;
  } catch {
    return line;
  }
  if (typeof entry.msg !== 'string') return line;
  const level = PINO_LEVELS[entry.level ?? 0] ?? `level ${entry.level}`;
  const error = entry.err?.message;
  const text = error && !entry.msg.includes(error) ? `${entry.msg}: ${error}` : entry.msg;
  return `  ${level} ${text}`;
}

let cleanUpPromise: Promise<void> | undefined;

/** Stops the worker before the coordinator, closes the backend and removes the temp dir. */
function cleanUp(state: DemoState): Promise<void> {
  cleanUpPromise ??= (async () => {
    step(state, 'Stopping the worker and the coordinator (SIGTERM)');
    for (const child of [...state.children].reverse()) {
      const status = await stopChild(child, STOP_MS);
      detail(`${child.name} exited (${describeExit(status)})`);
    }
    await state.backend?.close();
    if (state.tempDir) await rm(state.tempDir, { recursive: true, force: true });
  })();
  return cleanUpPromise;
}

// Exits at once, because a keep-alive socket of fetch could otherwise hold the process open.
process.exit(await main());

