import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { WebSocket } from 'ws';
import { TableDigest } from '../proto/index.ts';
import { freePort } from '../test/helpers/processes.ts';
import { ROOT, startChild, waitUntil } from './support.ts';

// Pieces of the sync benchmarks: a coordinator process whose memory is read
// from /proc, and a lean worker that keeps its table digest incrementally and
// acknowledges each snapshot and diff as soon as it has applied it.

export interface CoordinatorChild {
  url: string;
  pid: number;
  tokens: { manager: string; worker: string; read: string };
  /** The last 20,000 characters the process wrote. */
  output(): string;
  /** Resident and peak resident memory, in bytes. */
  memory(): Promise<{ residentBytes: number; peakBytes: number }>;
  /** Starts a new peak: the next `memory().peakBytes` counts from now. */
  resetPeak(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Starts src/coordinator/main.ts in a child process on a free port. With
 * `profileDir`, node writes a CPU profile there when the process exits.
 */
export async function startCoordinatorChild(options: {
  databaseUrl: string;
  dataDir: string;
  env?: Record<string, string>;
  profileDir?: string;
}): Promise<CoordinatorChild> {
  const port = await freePort();
  const loader = `file://${path.join(ROOT, 'node_modules/tsx/dist/loader.mjs')}`;
  const profile = options.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${options.profileDir}`] : [];
  const main = path.join(ROOT, 'src/coordinator/main.ts');
  const { child, output } = startChild(
    process.execPath,
    [...profile, '--import', loader, main, '--port', String(port)],
    {
      DATABASE_URL: options.databaseUrl,
      APPPROXY_DATA_DIR: options.dataDir,
      APPPROXY_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
      ...options.env,
    },
  );
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitUntil('coordinator health', 30_000, async () => (await fetch(`${url}/health`)).ok);
  } catch (error) {
    child.kill('SIGKILL');
    throw new Error(`${(error as Error).message}\n${output()}`);
  }
  const pid = child.pid as number;
  const tokens = JSON.parse(await readFile(path.join(options.dataDir, 'tokens.json'), 'utf8'));
  const exited = new Promise((resolve) => child.once('exit', resolve));
  return {
    url,
    pid,
    tokens,
    output,
    memory: () => processMemory(pid),
    // Writing 5 to clear_refs resets the peak resident size (Linux 4.0 and later).
    resetPeak: () => writeFile(`/proc/${pid}/clear_refs`, '5'),
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

async function processMemory(pid: number): Promise<{ residentBytes: number; peakBytes: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => {
    return Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)?.[1]) * 1024;
  };
  return { residentBytes: kib('VmRSS'), peakBytes: kib('VmHWM') };
}

/** Calls the REST API with a bearer token; throws on an error status. */
export async function callApi(
  url: string,
  token: string,
  method: string,
  urlPath: string,
  body?: unknown,
) {
  const response = await fetch(`${url}${urlPath}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (response.status >= 300) {
    throw new Error(`${method} ${urlPath} failed with ${response.status}: ${text}`);
  }
  return text ? JSON.parse(text) : null;
}

/** A diff or snapshot as the bench worker saw it arrive. */
export interface Arrival {
  type: 'snapshot' | 'diff';
  revision: number;
  /** Routes the message carried, with their revisions. */
  routes: Array<{ id: string; revision: number; updated_at: string }>;
  /** performance.now() when the message had arrived and been applied. */
  at: number;
}

/**
 * A worker for benchmarks: registers, opens its session, applies snapshots
 * and diffs to an id → revision map with an incremental digest, and acks at
 * once. It keeps no route bodies.
 */
export class BenchWorker {
  id = '';
  epoch = '';
  revision = 0;
  readonly table = new Map<string, number>();
  digest = new TableDigest();
  bytesReceived = 0;
  messagesReceived = 0;
  onArrival: ((arrival: Arrival) => void) | null = null;
  #sessionToken = '';
  #heartbeatIntervalMs = 5000;
  #heartbeatTimer: NodeJS.Timeout | undefined;
  #socket: WebSocket | null = null;
  #parts = new Map<string, number>();
  #replied: (() => void) | null = null;

  async register(url: string, workerToken: string, body: Record<string, unknown>): Promise<void> {
    const registration = await callApi(url, workerToken, 'POST', '/workers/register', body);
    this.id = registration.worker.id;
    this.#sessionToken = registration.session_token;
    this.#heartbeatIntervalMs = registration.heartbeat_interval_ms;
  }

  /** Opens the session; resolves once the reply to hello is applied and acknowledged. */
  async connect(url: string, resume: boolean): Promise<void> {
    const socket = new WebSocket(`${url.replace(/^http/, 'ws')}/workers/stream`, {
      headers: { authorization: `Bearer ${this.#sessionToken}` },
      maxPayload: 1024 * 1024,
    });
    this.#socket = socket;
    socket.on('message', (data) => this.#receive(data as Buffer));
    socket.on('error', () => {});
    socket.on('close', () => clearInterval(this.#heartbeatTimer));
    await new Promise<void>((resolve, reject) => {
      socket.once('open', resolve);
      socket.once('error', reject);
    });
    const replied = new Promise<void>((resolve) => (this.#replied = resolve));
    const hello: Record<string, unknown> = { type: 'hello', protocol_version: 1 };
    if (resume) {
      Object.assign(hello, {
        epoch: this.epoch,
        applied_revision: this.revision,
        digest: this.digest.toHex(),
      });
    }
    socket.send(JSON.stringify(hello));
    clearInterval(this.#heartbeatTimer);
    this.#heartbeatTimer = setInterval(() => this.#heartbeat(), this.#heartbeatIntervalMs);
    await replied;
  }

  #heartbeat(): void {
    if (this.#socket?.readyState !== WebSocket.OPEN) return;
    const sentAt = new Date().toISOString();
    const beat = { type: 'heartbeat', sent_at: sentAt, applied_revision: this.revision, stats: {} };
    this.#socket.send(JSON.stringify(beat));
  }

  /** Drops the connection without a close handshake, like a network failure. */
  kill(): void {
    clearInterval(this.#heartbeatTimer);
    this.#socket?.terminate();
  }

  async close(): Promise<void> {
    clearInterval(this.#heartbeatTimer);
    const socket = this.#socket;
    if (!socket || socket.readyState === WebSocket.CLOSED) return;
    await new Promise((resolve) => {
      socket.once('close', resolve);
      socket.close();
    });
  }

  #receive(data: Buffer): void {
    this.bytesReceived += data.length;
    this.messagesReceived += 1;
    const message = JSON.parse(data.toString('utf8'));
    if (message.type === 'snapshot') this.#applySnapshot(message);
    else if (message.type === 'diff') this.#applyDiff(message);
  }

  #applySnapshot(message: any): void {
    for (const route of message.routes) this.#parts.set(route.id, route.revision);
    if (message.more) return;
    const digest = new TableDigest();
    for (const [id, revision] of this.#parts) digest.toggle(id, revision);
    this.table.clear();
    for (const [id, revision] of this.#parts) this.table.set(id, revision);
    this.#parts = new Map();
    this.#applied(message, digest);
  }

  #applyDiff(message: any): void {
    if (message.from_revision !== this.revision) {
      throw new Error(`diff from ${message.from_revision} on a table at ${this.revision}`);
    }
    const digest = this.digest;
    for (const id of message.removes) {
      const revision = this.table.get(id);
      if (revision !== undefined) digest.toggle(id, revision);
      this.table.delete(id);
    }
    for (const route of message.upserts) {
      const revision = this.table.get(route.id);
      if (revision !== undefined) digest.toggle(route.id, revision);
      digest.toggle(route.id, route.revision);
      this.table.set(route.id, route.revision);
    }
    this.#applied(message, digest);
  }

  #applied(message: any, digest: TableDigest): void {
    if (digest.toHex() !== message.digest) {
      throw new Error(`digest mismatch at revision ${message.revision}`);
    }
    this.digest = digest;
    this.revision = message.revision;
    this.epoch = message.epoch;
    const ack = { type: 'ack', revision: this.revision, digest: digest.toHex() };
    this.#socket?.send(JSON.stringify(ack));
    const routes = message.type === 'snapshot' ? message.routes : message.upserts;
    const at = performance.now();
    this.onArrival?.({ type: message.type, revision: message.revision, routes, at });
    this.#replied?.();
    this.#replied = null;
  }
}
