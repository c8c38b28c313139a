import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import type { WireRoute } from '../../src/worker/table.ts';

/** Every test server binds here; tests send traffic nowhere else. */
export const LOOPBACK = '127.0.0.1';

/** Builds a route as the coordinator would push it, with one backend unless overridden. */
export function makeRoute(overrides: Partial<WireRoute> = {}): WireRoute {
  return {
    id: randomUUID(),
    session_id: 'session-1',
    service: 'jupyter',
    protocol: 'http',
    backends: [{ host: LOOPBACK, port: 1, weight: 1 }],
    worker_id: randomUUID(),
    port: null,
    subdomain: null,
    url: 'http://127.0.0.1',
    open_to_public: false,
    allowed_client_ips: [],
    revision: 1,
    ...overrides,
  };
}

/** Rejects with a message naming `what` when the promise does not settle in time. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls until `check` returns true; throws when it stays false past the deadline. */
export async function waitFor(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Returns a port that was free a moment ago; nothing listens on it when this resolves. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, LOOPBACK);
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

export interface TestServer {
  port: number;
  close(): Promise<void>;
}

async function listenOnLoopback(server: net.Server): Promise<TestServer> {
  server.listen(0, LOOPBACK);
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const close = async (): Promise<void> => {
    const closed = once(server, 'close');
    server.close();
    if (server instanceof http.Server) server.closeAllConnections();
    await closed;
  };
  return { port, close };
}

/**
 * Starts an HTTP backend that responds `<name> <method> <path>` and echoes WebSocket messages
 * back prefixed with `<name>:`. Each response returns the request's `x-forwarded-for` and
 * `host` headers in `x-seen-*` headers.
 */
export async function startHttpBackend(name: string): Promise<TestServer> {
  const server = http.createServer((request, response) => {
    response.setHeader('x-seen-forwarded-for', String(request.headers['x-forwarded-for']));
    response.setHeader('x-seen-host', String(request.headers.host));
    response.end(`${name} ${request.method} ${request.url}`);
  });
  const sockets = new WebSocketServer({ server });
  sockets.on('connection', (socket) => {
    socket.on('message', (data) => socket.send(`${name}:${data.toString()}`));
  });
  const backend = await listenOnLoopback(server);
  return {
    port: backend.port,
    close: async () => {
      for (const client of sockets.clients) client.terminate();
      sockets.close();
      await backend.close();
    },
  };
}

/** Starts a TCP server that writes back every byte it reads. */
export async function startTcpEcho(): Promise<TestServer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    socket.pipe(socket);
  });
  const echo = await listenOnLoopback(server);
  return {
    port: echo.port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await echo.close();
    },
  };
}

export interface SimpleResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** Sends one GET to 127.0.0.1 on a fresh connection. */
export function httpGet(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<SimpleResponse> {
  return new Promise((resolve, reject) => {
    const request = http.get({ host: LOOPBACK, port, path, headers, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        resolve({ status: response.statusCode ?? 0, headers: response.headers, body });
      });
      response.on('error', reject);
    });
    request.on('error', reject);
    request.setTimeout(5_000, () => request.destroy(new Error(`GET ${path} timed out`)));
  });
}

/** Connects to 127.0.0.1 and resolves with the error code, or 'connected'. */
export function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: LOOPBACK, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/** Sends `payload` over TCP and resolves with what comes back before the server closes. */
export function tcpExchange(port: number, payload: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect({ host: LOOPBACK, port }, () => socket.end(payload));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
    socket.on('error', reject);
    socket.setTimeout(5_000, () => socket.destroy(new Error('TCP exchange timed out')));
  });
}

/** Opens a WebSocket through 127.0.0.1, sends one message and resolves with the reply. */
export async function webSocketEcho(url: string, message: string, host?: string): Promise<string> {
  const socket = new WebSocket(url, { headers: host === undefined ? {} : { host } });
  try {
    await withTimeout(once(socket, 'open'), 5_000, `WebSocket ${url} to open`);
    socket.send(message);
    const [data] = await withTimeout(once(socket, 'message'), 5_000, 'WebSocket reply');
    return String(data);
  } finally {
    socket.terminate();
  }
}
