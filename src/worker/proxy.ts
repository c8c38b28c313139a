import { EventEmitter } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { createProxyServer, type ProxyServer } from 'http-proxy-3';
import { ListenError } from './errors.ts';
import {
  isClientAllowed,
  isHttpRoute,
  pickBackend,
  subdomainOf,
  type WireBackend,
} from './routing.ts';
import type { HeartbeatStats } from './session.ts';
import type { RouteTable, WireRoute } from './table.ts';

export interface ProxyOptions {
  table: RouteTable;
  mode: 'port' | 'wildcard';
  /** Address every listener binds to. */
  listenHost: string;
  /** Wildcard mode: port of the one listener, where 0 picks a free port. */
  listenPort?: number;
  /** Wildcard mode: domain every served host ends with, such as `.apps.example.test`. */
  wildcardDomain?: string;
  /** Source of randomness for the weighted choice of a backend, Math.random by default. */
  random?: () => number;
}

export interface BackendErrorInfo {
  routeId: string;
  backend: string;
  error: Error;
}

export interface ProxyEvents {
  listening: [info: { port: number }];
  unlistened: [info: { port: number }];
  /** A port a route needs could not be opened. The next table change tries it again. */
  listenError: [error: ListenError, route: WireRoute | undefined];
  backendError: [info: BackendErrorInfo];
}

/** One open listening socket and the client connections it accepted. */
interface Listener {
  port: number;
  kind: 'http' | 'tcp';
  server: net.Server;
  sockets: Set<net.Socket>;
}

/** Finds the route of one HTTP request; undefined leads to a 404 response. */
type RouteResolver = (request: http.IncomingMessage) => WireRoute | undefined;

const TEXT = {
  noPortRoute: 'Not found: no route is served on this port.\n',
  noHostRoute: 'Not found: no route is served for this host.\n',
  forbidden: 'Forbidden: this client address may not use this route.\n',
  badGateway: 'Bad gateway: the backend could not be reached.\n',
};

/**
 * The worker's data plane: serves the routes of a RouteTable over HTTP (with WebSocket
 * upgrades) and TCP.
 *
 * In port mode it listens only on ports that have a route, opening and closing listeners as
 * the table changes, so a port without a route refuses connections. In wildcard mode one
 * listener serves every route, chosen by the subdomain of the `Host` header.
 */
export class WorkerProxy extends EventEmitter<ProxyEvents> {
  readonly #options: ProxyOptions;
  readonly #listeners = new Map<number, Listener>();
  /** Client sockets tied to one route for their whole life: TCP pipes and WebSockets. */
  readonly #bound = new Map<net.Socket, string>();
  /** Bytes moved by each bound socket at the last stats collection, to detect activity. */
  readonly #boundBytes = new WeakMap<net.Socket, number>();
  readonly #upgraded = new WeakSet<Duplex>();
  readonly #activity = new Map<string, number>();
  readonly #agent = new http.Agent({ keepAlive: true });
  readonly #proxy: ProxyServer;
  readonly #wildcardDomain: string;
  #sync: Promise<void> = Promise.resolve();
  #isSyncQueued = false;
  #isClosed = false;

  constructor(options: ProxyOptions) {
    super();
    this.#options = options;
    this.#wildcardDomain = normalizeWildcardDomain(options.wildcardDomain ?? '');
    if (options.mode === 'wildcard' && this.#wildcardDomain === '') {
      throw new TypeError('Expected a wildcard domain such as .apps.example.test, got none');
    }
    this.#proxy = createProxyServer({ xfwd: true });
    this.#proxy.on('proxyReqWs', (proxyRequest, request, socket) => {
      proxyRequest.once('upgrade', () => this.#upgraded.add(socket));
    });
    // Errors of client sockets during WebSocket proxying are ordinary hang-ups, and the
    // library already ends the other side.
    this.#proxy.on('error', () => {});
  }

  /** Opens the listeners the current table needs and follows its changes from now on. */
  async start(): Promise<void> {
    this.#options.table.on('change', this.#onTableChange);
    if (this.#options.mode === 'wildcard') {
      await this.#openListener(this.#options.listenPort ?? 0, 'http', this.#routeForHost);
      return;
    }
    this.#scheduleSync();
    await this.settled();
  }

  /** Resolves when the listeners match the table as of this call. */
  async settled(): Promise<void> {
    let current: Promise<void>;
    do {
      current = this.#sync;
      await current;
    } while (current !== this.#sync);
  }

  /** Stops listening and closes every client connection. */
  async close(): Promise<void> {
    this.#isClosed = true;
    this.#options.table.off('change', this.#onTableChange);
    await this.#sync;
    await Promise.all([...this.#listeners.values()].map((listener) => this.#close(listener)));
    this.#agent.destroy();
  }

  /** Ports that have an open listener. */
  listeningPorts(): number[] {
    return [...this.#listeners.keys()];
  }

  /** Port of the wildcard listener, or null in port mode and before `start()`. */
  get wildcardPort(): number | null {
    if (this.#options.mode !== 'wildcard') return null;
    const [listener] = this.#listeners.values();
    return listener?.port ?? null;
  }

  /** Number of open client connections over all listeners. */
  get connectionCount(): number {
    let count = 0;
    for (const listener of this.#listeners.values()) count += listener.sockets.size;
    return count;
  }

  /**
   * Returns heartbeat stats: the routes with activity since the previous call, and the open
   * client connections. Each call starts a new activity period.
   */
  collectStats(): HeartbeatStats {
    this.#detectBoundActivity();
    const routes = [...this.#activity].map(([id, at]) => ({
      id,
      last_activity_at: new Date(at).toISOString(),
    }));
    this.#activity.clear();
    return { routes, connections: this.connectionCount };
  }

  readonly #onTableChange = (): void => {
    this.#closeOrphanedSockets();
    if (this.#options.mode === 'port') this.#scheduleSync();
  };

  readonly #routeForHost: RouteResolver = (request) => {
    const label = subdomainOf(request.headers.host, this.#wildcardDomain);
    return label === undefined ? undefined : this.#options.table.routeForSubdomain(label);
  };

  #routeForPort(port: number): RouteResolver {
    return () => this.#options.table.routeForPort(port);
  }

  #scheduleSync(): void {
    // One queued pass reads the latest table, so changes that arrive meanwhile coalesce.
    if (this.#isSyncQueued) return;
    this.#isSyncQueued = true;
    this.#sync = this.#sync.then(() => {
      this.#isSyncQueued = false;
      return this.#syncListeners();
    });
  }

  async #syncListeners(): Promise<void> {
    if (this.#isClosed) return;
    const needed = new Map<number, Listener['kind']>();
    for (const [port, route] of this.#options.table.portRoutes()) {
      needed.set(port, isHttpRoute(route) ? 'http' : 'tcp');
    }

    const listeners = [...this.#listeners.values()];
    const stale = listeners.filter(({ port, kind }) => needed.get(port) !== kind);
    await Promise.all(stale.map((listener) => this.#close(listener)));
    const missing = [...needed].filter(([port]) => !this.#listeners.has(port));
    await Promise.all(missing.map(([port, kind]) => this.#openPortListener(port, kind)));
  }

  async #openPortListener(port: number, kind: Listener['kind']): Promise<void> {
    try {
      await this.#openListener(port, kind, this.#routeForPort(port));
    } catch (error) {
      this.emit('listenError', error as ListenError, this.#options.table.routeForPort(port));
    }
  }

  /** Opens one listener. Throws ListenError when the port cannot be bound. */
  async #openListener(port: number, kind: Listener['kind'], resolve: RouteResolver) {
    const server =
      kind === 'tcp'
        ? net.createServer({ allowHalfOpen: true }, (socket) => this.#pipeTcp(socket, port))
        : this.#createHttpServer(resolve);
    const listener: Listener = { port, kind, server, sockets: new Set() };
    server.on('connection', (socket: net.Socket) => this.#track(listener, socket));

    try {
      listener.port = await listen(server, this.#options.listenHost, port);
    } catch (error) {
      throw new ListenError(this.#options.listenHost, port, { cause: error });
    }
    this.#listeners.set(listener.port, listener);
    this.emit('listening', { port: listener.port });
  }

  #createHttpServer(resolve: RouteResolver): http.Server {
    // requestTimeout 0 because uploads to notebooks and model servers may take longer than
    // Node's default of 5 minutes. headersTimeout still bounds clients that stall.
    const server = http.createServer({ requestTimeout: 0 }, (request, response) => {
      this.#serveRequest(request, response, resolve(request));
    });
    server.on('upgrade', (request: http.IncomingMessage, socket: Duplex, head: Buffer) => {
      this.#serveUpgrade(request, socket as net.Socket, head, resolve(request));
    });
    return server;
  }

  #track(listener: Listener, socket: net.Socket): void {
    listener.sockets.add(socket);
    socket.once('close', () => {
      listener.sockets.delete(socket);
      this.#bound.delete(socket);
    });
  }

  async #close(listener: Listener): Promise<void> {
    this.#listeners.delete(listener.port);
    const closed = new Promise<void>((resolve) => listener.server.close(() => resolve()));
    for (const socket of listener.sockets) socket.destroy();
    await closed;
    this.emit('unlistened', { port: listener.port });
  }

  #serveRequest(
    request: http.IncomingMessage,
    response: http.ServerResponse,
    route: WireRoute | undefined,
  ): void {
    if (route === undefined || !isHttpRoute(route)) {
      return sendText(response, 404, this.#notFoundText());
    }
    if (!isClientAllowed(route, request.socket.remoteAddress)) {
      return sendText(response, 403, TEXT.forbidden);
    }
    const backend = pickBackend(route.backends, this.#options.random);
    if (backend === undefined) return sendText(response, 502, TEXT.badGateway);

    this.#markActive(route.id);
    // Long downloads count as activity when they end, not only when they start.
    response.once('finish', () => this.#markActive(route.id));
    const options = { target: targetOf(backend), agent: this.#agent };
    this.#proxy.web(request, response, options, (error) => {
      this.#reportBackendError(route, backend, error);
      if (!response.headersSent) return sendText(response, 502, TEXT.badGateway);
      response.destroy();
    });
  }

  #serveUpgrade(
    request: http.IncomingMessage,
    socket: net.Socket,
    head: Buffer,
    route: WireRoute | undefined,
  ): void {
    // The HTTP server no longer handles errors of a socket it passed on as an upgrade.
    socket.on('error', () => socket.destroy());
    if (route === undefined || !isHttpRoute(route)) {
      return writeResponse(socket, 404, this.#notFoundText());
    }
    if (!isClientAllowed(route, socket.remoteAddress)) {
      return writeResponse(socket, 403, TEXT.forbidden);
    }
    const backend = pickBackend(route.backends, this.#options.random);
    if (backend === undefined) return writeResponse(socket, 502, TEXT.badGateway);

    this.#bind(socket, route);
    this.#proxy.ws(request, socket, head, { target: targetOf(backend) }, (error) => {
      this.#reportBackendError(route, backend, error);
      // After the upgrade the socket carries WebSocket frames, and the library closes it.
      if (!this.#upgraded.has(socket)) writeResponse(socket, 502, TEXT.badGateway);
    });
  }

  #pipeTcp(client: net.Socket, port: number): void {
    const route = this.#options.table.routeForPort(port);
    const isServed = route !== undefined && !isHttpRoute(route);
    if (!isServed || !isClientAllowed(route, client.remoteAddress)) return void client.destroy();
    const backend = pickBackend(route.backends, this.#options.random);
    if (backend === undefined) return void client.destroy();

    this.#bind(client, route);
    const upstream = net.connect({ host: backend.host, port: backend.port, allowHalfOpen: true });
    let isConnected = false;
    upstream.once('connect', () => (isConnected = true));
    upstream.on('error', (error) => {
      // Resets after the connection was up are ordinary hang-ups, not backend failures.
      if (!isConnected) this.#reportBackendError(route, backend, error);
      client.destroy();
    });
    client.on('error', () => upstream.destroy());
    client.on('close', () => upstream.destroy());
    // Both sides allow half-open connections, so `pipe` passes each FIN on to the other side.
    upstream.on('close', () => client.end());
    client.pipe(upstream).pipe(client);
  }

  #bind(socket: net.Socket, route: WireRoute): void {
    this.#bound.set(socket, route.id);
    this.#boundBytes.set(socket, 0);
    this.#markActive(route.id);
  }

  /** Closes bound sockets whose route is gone or no longer admits their client address. */
  #closeOrphanedSockets(): void {
    for (const [socket, routeId] of this.#bound) {
      const route = this.#options.table.routeById(routeId);
      if (route !== undefined && isClientAllowed(route, socket.remoteAddress)) continue;
      socket.destroy();
      this.#bound.delete(socket);
    }
  }

  /** Counts a bound socket as active when it moved bytes since the last collection. */
  #detectBoundActivity(): void {
    for (const [socket, routeId] of this.#bound) {
      const bytes = socket.bytesRead + socket.bytesWritten;
      if (bytes !== this.#boundBytes.get(socket)) this.#markActive(routeId);
      this.#boundBytes.set(socket, bytes);
    }
  }

  #markActive(routeId: string): void {
    this.#activity.set(routeId, Date.now());
  }

  #reportBackendError(route: WireRoute, backend: WireBackend, error: Error): void {
    this.emit('backendError', { routeId: route.id, backend: hostPort(backend), error });
  }

  #notFoundText(): string {
    return this.#options.mode === 'port' ? TEXT.noPortRoute : TEXT.noHostRoute;
  }
}

/** Lower-cases a wildcard domain and makes sure it starts with a dot. */
export function normalizeWildcardDomain(domain: string): string {
  const trimmed = domain.trim().toLowerCase().replace(/\.$/, '');
  if (trimmed === '') return '';
  return trimmed.startsWith('.') ? trimmed : `.${trimmed}`;
}

function listen(server: net.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

function targetOf(backend: WireBackend): { host: string; port: number; protocol: string } {
  return { host: backend.host, port: backend.port, protocol: 'http:' };
}

function hostPort(backend: WireBackend): string {
  return net.isIPv6(backend.host)
    ? `[${backend.host}]:${backend.port}`
    : `${backend.host}:${backend.port}`;
}

function sendText(response: http.ServerResponse, status: number, text: string): void {
  response.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  response.end(text);
}

/** Writes a whole HTTP/1.1 response on a raw socket and closes it. */
function writeResponse(socket: net.Socket, status: number, text: string): void {
  if (!socket.writable) return void socket.destroy();
  const head = [
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}`,
    'content-type: text/plain; charset=utf-8',
    `content-length: ${Buffer.byteLength(text)}`,
    'connection: close',
  ];
  socket.end(`${head.join('\r\n')}\r\n\r\n${text}`);
}
