import { WebSocket } from 'ws';
import { TableDigest, type DiffMessage, type SnapshotMessage } from '../../proto/index.ts';

/** A route as a scripted worker keeps it. */
export interface HeldRoute {
  id: string;
  revision: number;
  backends: Array<{ host: string; port: number }>;
  port: number | null;
  subdomain: string | null;
}

/**
 * A worker's route table that keeps its digest up to date on every change,
 * so a large table does not cost a full digest per message.
 */
export class HeldTable extends Map<string, HeldRoute> {
  #digest = new TableDigest();

  override set(id: string, route: HeldRoute): this {
    const old = super.get(id);
    if (old) this.#digest.toggle(id, old.revision);
    this.#digest.toggle(id, route.revision);
    return super.set(id, route);
  }

  override delete(id: string): boolean {
    const old = super.get(id);
    if (old) this.#digest.toggle(id, old.revision);
    return super.delete(id);
  }

  override clear(): void {
    this.#digest = new TableDigest();
    super.clear();
  }

  get digest(): string {
    return this.#digest.toHex();
  }
}

/** Copies routes into a HeldTable one by one: Map's constructor would call `set` too early. */
function toHeldTable(routes: Iterable<[string, HeldRoute]>): HeldTable {
  const table = new HeldTable();
  for (const [id, route] of routes) table.set(id, route);
  return table;
}

export interface ScriptedWorkerOptions {
  coordinatorUrl: string;
  workerToken: string;
  authority?: string;
  instanceId?: string;
  mode?: 'port' | 'wildcard';
  wildcardDomain?: string;
  portRange?: [number, number];
  /** Acknowledge each snapshot and diff at once (default true). */
  autoAck?: boolean;
  /** Send heartbeats every interval (default true). */
  heartbeats?: boolean;
  /** Delays each automatic ack by this many ms, acking the revision it was due for. */
  ackDelayMs?: number;
  /**
   * Returns an error text to reject a snapshot or diff with a `rejected` nack;
   * the worker then applies nothing from that message.
   */
  reject?: (message: Record<string, any>) => string | undefined;
}

/**
 * A worker driven by a test: registers, keeps one session open, keeps its table
 * and digest as the contract says, and records every message it receives.
 */
export class ScriptedWorker {
  readonly options: ScriptedWorkerOptions;
  readonly messages: Array<Record<string, any>> = [];
  revision = 0;
  epoch = '';
  registration: any;
  closeCode: number | null = null;
  #table = new HeldTable();
  #socket: WebSocket | null = null;
  #snapshotParts: HeldRoute[] = [];
  #heartbeatTimer: NodeJS.Timeout | undefined;
  #waiters: Array<() => void> = [];

  constructor(options: ScriptedWorkerOptions) {
    this.options = { autoAck: true, heartbeats: true, ...options };
  }

  get id(): string {
    return this.registration.worker.id;
  }

  get table(): HeldTable {
    return this.#table;
  }

  /** Replaces the table; tests assign one to model a worker that lost or changed its state. */
  set table(routes: Map<string, HeldRoute>) {
    this.#table = toHeldTable(routes);
  }

  get digest(): string {
    return this.#table.digest;
  }

  async register(extra: Record<string, unknown> = {}): Promise<any> {
    const mode = this.options.mode ?? 'port';
    const body: Record<string, unknown> = {
      authority: this.options.authority ?? 'proxy-a',
      frontend_mode: mode,
      hostname: 'proxy-a.example.test',
      ...(this.options.instanceId ? { instance_id: this.options.instanceId } : {}),
      ...(mode === 'port'
        ? { port_range: this.options.portRange ?? [20000, 20999] }
        : { wildcard_domain: this.options.wildcardDomain ?? '.apps.example.test' }),
      ...extra,
    };
    const response = await fetch(`${this.options.coordinatorUrl}/workers/register`, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.options.workerToken}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const json = await response.json();
    if (response.status >= 300) throw new Error(`register failed: ${response.status} ${JSON.stringify(json)}`);
    this.registration = json;
    return json;
  }

  /** Opens the session and sends hello; with `resume`, requests a diff from its table. */
  async connect(resume = false): Promise<void> {
    const url = `${this.options.coordinatorUrl.replace(/^http/, 'ws')}/workers/stream`;
    const socket = new WebSocket(url, { headers: { authorization: `Bearer ${this.registration.session_token}` } });
    this.#socket = socket;
    this.closeCode = null;
    socket.on('message', (data) => this.#receive(JSON.parse(String(data))));
    socket.on('close', (code) => {
      this.closeCode = code;
      clearInterval(this.#heartbeatTimer);
      this.#notify();
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('error', reject);
      socket.once('unexpected-response', (_request, response) => reject(new Error(`upgrade ${response.statusCode}`)));
    });
    const hello: Record<string, unknown> = { type: 'hello', protocol_version: 1 };
    if (resume) Object.assign(hello, { epoch: this.epoch, applied_revision: this.revision, digest: this.digest });
    this.send(hello);
    if (this.options.heartbeats) {
      const interval = this.registration.heartbeat_interval_ms;
      this.#heartbeatTimer = setInterval(() => this.heartbeat(), interval);
    }
  }

  heartbeat(): void {
    this.send({ type: 'heartbeat', sent_at: new Date().toISOString(), applied_revision: this.revision, stats: {} });
  }

  send(message: unknown): void {
    if (this.#socket?.readyState === WebSocket.OPEN) this.#socket.send(JSON.stringify(message));
  }

  ack(): void {
    this.send({ type: 'ack', revision: this.revision, digest: this.digest });
  }

  /** Closes the socket abruptly, like a crashed process. */
  kill(): void {
    clearInterval(this.#heartbeatTimer);
    this.#socket?.terminate();
  }

  async close(): Promise<void> {
    clearInterval(this.#heartbeatTimer);
    if (!this.#socket || this.#socket.readyState === WebSocket.CLOSED) return;
    const closed = new Promise((resolve) => this.#socket?.once('close', resolve));
    this.#socket.close();
    await closed;
  }

  /** Waits until `predicate` holds, re-checked after each message; fails after `timeoutMs`. */
  async waitFor(predicate: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 100));
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  #notify(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter();
  }

  /** Stops heartbeats and stops reading the socket, like a frozen process; sends no close. */
  freeze(): void {
    clearInterval(this.#heartbeatTimer);
    this.#socket?.pause();
  }

  /** Reads the socket again after `freeze`, and resumes heartbeats. */
  thaw(): void {
    this.#socket?.resume();
    if (!this.options.heartbeats) return;
    clearInterval(this.#heartbeatTimer);
    this.#heartbeatTimer = setInterval(() => this.heartbeat(), this.registration.heartbeat_interval_ms);
  }

  #receive(message: Record<string, any>): void {
    this.messages.push(message);
    const rejection = this.#rejection(message);
    if (rejection !== undefined) {
      this.send({ type: 'nack', revision: message.revision, reason: 'rejected', error: rejection });
    } else if (message.type === 'snapshot') {
      this.#applySnapshot(message as SnapshotMessage);
    } else if (message.type === 'diff') {
      this.#applyDiff(message as DiffMessage);
    }
    this.#notify();
  }

  #rejection(message: Record<string, any>): string | undefined {
    if (message.type !== 'snapshot' && message.type !== 'diff') return undefined;
    return this.options.reject?.(message);
  }

  #applySnapshot(message: SnapshotMessage): void {
    this.#snapshotParts.push(...message.routes.map(hold));
    if (message.more) return;
    this.table = new Map(this.#snapshotParts.map((route) => [route.id, route]));
    this.#snapshotParts = [];
    this.revision = message.revision;
    this.epoch = message.epoch;
    this.#checkDigest(message.digest);
  }

  #applyDiff(message: DiffMessage): void {
    if (message.from_revision !== this.revision) {
      this.send({ type: 'nack', revision: message.revision, reason: 'digest_mismatch', error: 'diff from another revision' });
      return;
    }
    for (const route of message.upserts) this.table.set(route.id, hold(route));
    for (const id of message.removes) this.table.delete(id);
    this.revision = message.revision;
    this.#checkDigest(message.digest);
  }

  #checkDigest(expected: string): void {
    if (this.digest !== expected) {
      this.table = new Map();
      this.send({ type: 'nack', revision: this.revision, reason: 'digest_mismatch', error: 'digest mismatch' });
      return;
    }
    if (!this.options.autoAck) return;
    if (!this.options.ackDelayMs) return this.ack();
    const ack = { type: 'ack', revision: this.revision, digest: this.digest };
    setTimeout(() => this.send(ack), this.options.ackDelayMs);
  }
}

function hold(route: any): HeldRoute {
  return {
    id: route.id,
    revision: route.revision,
    backends: route.backends,
    port: route.port,
    subdomain: route.subdomain,
  };
}
