import { once } from 'node:events';
import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer } from 'ws';
import { LOOPBACK, withTimeout } from './helpers.ts';

export const WORKER_TOKEN = 'worker-token-for-tests';
export const WORKER_ID = '6f1c1a8e-34b4-4a63-9b63-3c1b2f1a9d10';

type Message = Record<string, unknown> & { type: string };

/** FIFO whose `shift` waits for the next item, with a timeout. */
class WaitQueue<T> {
  readonly #items: T[] = [];
  readonly #waiters: Array<(item: T) => void> = [];

  push(item: T): void {
    const waiter = this.#waiters.shift();
    if (waiter === undefined) this.#items.push(item);
    else waiter(item);
  }

  shift(timeoutMs: number, what: string): Promise<T> {
    const item = this.#items.shift();
    if (item !== undefined) return Promise.resolve(item);
    const waiting = new Promise<T>((resolve) => this.#waiters.push(resolve));
    return withTimeout(waiting, timeoutMs, what);
  }

  get size(): number {
    return this.#items.length;
  }
}

/** Coordinator side of one worker session. */
export class ScriptedSession {
  readonly socket: WebSocket;
  readonly token: string;
  readonly #messages = new WaitQueue<Message>();
  readonly closed: Promise<number>;

  constructor(socket: WebSocket, token: string) {
    this.socket = socket;
    this.token = token;
    socket.on('message', (data) => this.#messages.push(JSON.parse(data.toString()) as Message));
    this.closed = once(socket, 'close').then(([code]) => code as number);
  }

  /** Waits for the next message of `type`, skipping heartbeats unless they are asked for. */
  async next(type: string, timeoutMs = 5_000): Promise<Message> {
    for (;;) {
      const message = await this.#messages.shift(timeoutMs, `a ${type} message`);
      if (message.type === type) return message;
      if (message.type !== 'heartbeat') {
        throw new Error(`Expected a ${type} message, got ${JSON.stringify(message)}`);
      }
    }
  }

  send(message: object): void {
    this.socket.send(JSON.stringify(message));
  }

  close(code: number, reason = ''): void {
    this.socket.close(code, reason);
  }
}

export interface ScriptedCoordinatorOptions {
  heartbeatIntervalMs?: number;
  heartbeatMisses?: number;
  epoch?: string;
  /** Session tokens accepted on the stream. Coordinators given one set share tokens. */
  sessionTokens?: Set<string>;
}

interface Registration {
  authorization: string | undefined;
  body: Record<string, unknown>;
}

/**
 * A coordinator stand-in on 127.0.0.1 that handles `POST /workers/register` and accepts
 * `GET /workers/stream`, so a test script plays the coordinator's side of the session.
 */
export class ScriptedCoordinator {
  readonly #server = http.createServer((request, response) => this.#onRequest(request, response));
  readonly #sockets = new WebSocketServer({ noServer: true });
  readonly #registrations = new WaitQueue<Registration>();
  readonly #sessions = new WaitQueue<ScriptedSession>();
  readonly #options: Required<Omit<ScriptedCoordinatorOptions, 'sessionTokens'>>;
  readonly sessionTokens: Set<string>;
  /** Status and detail to return for registrations instead of a grant. */
  registrationFailure: { status: number; detail: string } | null = null;
  #registrationCount = 0;
  url = '';

  constructor(options: ScriptedCoordinatorOptions = {}) {
    this.#options = {
      heartbeatIntervalMs: options.heartbeatIntervalMs ?? 5_000,
      heartbeatMisses: options.heartbeatMisses ?? 3,
      epoch: options.epoch ?? 'epoch-a',
    };
    this.sessionTokens = options.sessionTokens ?? new Set();
    this.#server.on('upgrade', (request, socket, head) => this.#onUpgrade(request, socket, head));
  }

  async start(): Promise<this> {
    this.#server.listen(0, LOOPBACK);
    await once(this.#server, 'listening');
    const { port } = this.#server.address() as net.AddressInfo;
    this.url = `http://${LOOPBACK}:${port}`;
    return this;
  }

  get epoch(): string {
    return this.#options.epoch;
  }

  get registrationCount(): number {
    return this.#registrationCount;
  }

  /** Number of sessions opened and not yet taken with `nextSession`. */
  get pendingSessions(): number {
    return this.#sessions.size;
  }

  nextRegistration(timeoutMs = 5_000): Promise<Registration> {
    return this.#registrations.shift(timeoutMs, 'a registration');
  }

  nextSession(timeoutMs = 5_000): Promise<ScriptedSession> {
    return this.#sessions.shift(timeoutMs, 'a session');
  }

  async close(): Promise<void> {
    for (const client of this.#sockets.clients) client.terminate();
    this.#sockets.close();
    const closed = once(this.#server, 'close');
    this.#server.close();
    this.#server.closeAllConnections();
    await closed;
  }

  #onRequest(request: http.IncomingMessage, response: http.ServerResponse): void {
    if (request.method !== 'POST' || request.url !== '/workers/register') {
      return sendJson(response, 404, { detail: 'not found' });
    }
    if (request.headers.authorization !== `Bearer ${WORKER_TOKEN}`) {
      return sendJson(response, 401, { detail: 'unknown token' });
    }
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown>;
      this.#registrations.push({ authorization: request.headers.authorization, body });
      this.#answerRegistration(response, body);
    });
  }

  #answerRegistration(response: http.ServerResponse, body: Record<string, unknown>): void {
    if (this.registrationFailure !== null) {
      const { status, detail } = this.registrationFailure;
      return sendJson(response, status, { status, detail });
    }
    this.#registrationCount += 1;
    const token = `session-token-${this.#registrationCount}-${Math.random()}`;
    this.sessionTokens.add(token);
    sendJson(response, this.#registrationCount === 1 ? 201 : 200, {
      worker: { id: WORKER_ID, authority: body.authority },
      instance_id: body.instance_id,
      session_token: token,
      generation: this.#registrationCount,
      heartbeat_interval_ms: this.#options.heartbeatIntervalMs,
      heartbeat_misses: this.#options.heartbeatMisses,
      epoch: this.#options.epoch,
      revision: 0,
      routes: [],
      routes_complete: true,
    });
  }

  #onUpgrade(request: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const token = request.headers.authorization?.replace(/^Bearer /, '') ?? '';
    if (request.url !== '/workers/stream' || !this.sessionTokens.has(token)) {
      socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      return;
    }
    this.#sockets.handleUpgrade(request, socket, head, (webSocket) => {
      this.#sessions.push(new ScriptedSession(webSocket, token));
    });
  }
}

function sendJson(response: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(text);
}
