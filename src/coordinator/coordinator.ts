import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { CloseCode } from '../../proto/index.ts';
import { EventStreamServer } from '../events/stream.ts';
import { createHttpApp } from '../http/app.ts';
import { ChangeFeed } from '../hub/feed.ts';
import { Hub } from '../hub/hub.ts';
import type { Logger } from '../log.ts';
import { CoordinatorMetrics } from '../metrics.ts';
import { EventService } from '../services/events.ts';
import { PresenceService } from '../services/presence.ts';
import { RouteService } from '../services/routes.ts';
import { readHealth } from '../services/status.ts';
import { WorkerService } from '../services/workers.ts';
import { readMeta } from '../store/changes.ts';
import { openDatabase, type Database } from '../store/database.ts';
import { migrate } from '../store/migrate.ts';
import { Writer } from '../store/writer.ts';
import type { CoordinatorConfig } from './config.ts';
import { watchDatabaseConnections } from './database-log.ts';
import { RequestTracker } from './requests.ts';
import { Sweeper } from './sweeper.ts';
import { Authenticator, loadTokens } from './tokens.ts';

/** A write fails with 503 when it has not committed by then, in ms. */
const WRITE_TIMEOUT_MS = 2000;

/**
 * Shutdown waits this long for requests in flight, such as writes waiting for
 * acks, within the 10 s that main.ts allows for the whole shutdown.
 */
const DRAIN_TIMEOUT_MS = 4000;

/** How often a coordinator records that it runs, and when it counts as stopped, in ms. */
const PRESENCE_INTERVAL_MS = 2000;
const PRESENCE_TIMEOUT_MS = 10_000;

export interface Coordinator {
  /** Base URL of the REST API, such as http://127.0.0.1:6030. */
  url: string;
  port: number;
  /**
   * Stops accepting, waits up to DRAIN_TIMEOUT_MS for requests in flight, closes
   * worker sessions with 1012, and closes the database.
   */
  close(): Promise<void>;
}

/** Opens the database, applies migrations, and starts serving. */
export async function startCoordinator(config: CoordinatorConfig, log: Logger): Promise<Coordinator> {
  const db = await openDatabase({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    poolSize: config.poolSize,
    connectTimeoutS: 2,
    statementTimeoutMs: 30_000,
  });
  log.info({ database: db.location }, 'database opened');
  try {
    return await startOn(db, config, log);
  } catch (error) {
    await db.close().catch(() => {});
    throw error;
  }
}

async function startOn(db: Database, config: CoordinatorConfig, log: Logger): Promise<Coordinator> {
  const applied = await migrateWithRetry(db, log);
  if (applied.length > 0) log.info({ migrations: applied }, 'applied migrations');
  const { epoch } = await readMeta(db.sql);

  const feed = new ChangeFeed(db.sql, log, { pollIntervalMs: 1000, supportsListen: !db.isEmbedded });
  // The live gauges read the hub and the stream only on a scrape, after both exist.
  const metrics = new CoordinatorMetrics({
    sql: db.sql,
    poolSize: db.isEmbedded ? 1 : config.poolSize,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    log,
    sendQueueBytes: () => hub.bufferedBytes,
    workerSessions: () => hub.sessionCount,
    eventStreamSubscribers: () => stream.subscriberCount,
  });
  const writer = new Writer(db.sql, {
    maxBatch: 100,
    timeoutMs: WRITE_TIMEOUT_MS,
    onCommit: (changes) => feed.publish(changes),
    onCommitting: (revision) => feed.expect(revision),
    onCommitFailed: () => feed.expectFailed(),
    metrics,
  });
  const heartbeat = { intervalMs: config.heartbeatIntervalMs, misses: config.heartbeatMisses };
  const routes = new RouteService(db.sql, writer);
  const workers = new WorkerService(db.sql, writer, heartbeat, log);
  const events = new EventService(db.sql);
  const auth = new Authenticator(db.sql, async (hash) => {
    const session = await workers.findSession(hash);
    return session ? { kind: 'session', ...session } : null;
  });
  await publishTokens(auth, config, log);
  await feed.start();

  const coordinatorId = randomUUID();
  const presence = new PresenceService(db.sql, writer, coordinatorId);
  await presence.touch();
  let isTouching = false;
  const presenceTimer = setInterval(() => {
    // A touch still waiting on a slow database is enough, because more would only queue behind it.
    if (isTouching) return;
    isTouching = true;
    presence
      .touch()
      .catch((error) => log.debug({ err: error }, 'recording presence failed'))
      .finally(() => {
        isTouching = false;
      });
  }, PRESENCE_INTERVAL_MS);
  const hub = new Hub({
    sql: db.sql,
    feed,
    workers,
    log,
    epoch,
    coordinatorId,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    heartbeatMisses: config.heartbeatMisses,
    limits: {
      helloTimeoutMs: 10_000,
      highWaterBytes: 1024 * 1024,
      sendTimeoutMs: config.sessionSendTimeoutMs,
      maxMessagesPerSecond: 200,
      snapshotChunkBytes: 512 * 1024,
    },
    admissionConcurrency: config.sessionAdmissionConcurrency,
    // Past this many changes a resume reads more than a snapshot of a typical table would.
    maxResumeChanges: 10_000,
    metrics,
  });
  hub.start();
  const stream = new EventStreamServer({ feed, events, auth, log, maxBufferedBytes: 8 * 1024 * 1024 });
  const app = createHttpApp({
    routes,
    workers,
    events,
    auth,
    log,
    health: () => readHealth(db.sql, 1500),
    metrics: () => metrics.render(),
    observeRequest: (request) => metrics.observeRequest(request),
    waitForApplied: (routeId, revision, timeoutMs) =>
      waitForApplied(routes, routeId, revision, timeoutMs),
    waitForWorkerApplied: (workerId, revision, timeoutMs) =>
      waitForWorkerApplied(workers, workerId, revision, timeoutMs),
  });

  const server = createListener(config, app.callback());
  const requests = new RequestTracker(server);
  server.on('upgrade', (request, socket, head) => {
    void routeUpgrade(request, socket, head, { hub, stream }).catch((error) => {
      log.error({ err: error }, 'WebSocket upgrade failed');
      socket.destroy();
    });
  });
  await listen(server, config.host, config.port);
  const port = (server.address() as AddressInfo).port;

  const sweeper = new Sweeper({
    sql: db.sql,
    workers,
    routes,
    log,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    heartbeatMisses: config.heartbeatMisses,
    changeLog: { maxAgeMs: config.changeLogMaxAgeMs, maxCount: config.changeLogMaxCount },
    compactionIntervalMs: config.changeLogCompactionIntervalMs,
    // The embedded database serves one process over one connection: no lock needed.
    useLock: !db.isEmbedded,
    presence,
    presenceTimeoutMs: PRESENCE_TIMEOUT_MS,
    metrics,
    heartbeatsWrittenAt: () => hub.heartbeatsWrittenAt,
  });
  sweeper.start();
  const stopWatchingDatabase = watchDatabaseConnections(db.sql, log);
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  log.info({ host: config.host, port, epoch, coordinator_id: coordinatorId }, 'coordinator listening');

  return {
    url: `${config.tls ? 'https' : 'http'}://${host}:${port}`,
    port,
    close: async () => {
      log.info('coordinator stopping');
      server.close();
      await sweeper.stop();
      // Sessions stay open while requests drain, so writes waiting for acks can still get them.
      if (!(await requests.drain(DRAIN_TIMEOUT_MS))) {
        const fields = { requests: requests.inFlight, timeout_ms: DRAIN_TIMEOUT_MS };
        log.warn(fields, 'requests still running at shutdown; closing them');
      }
      await hub.stop(CloseCode.restarting);
      await workers.flushActivity();
      stream.close();
      server.closeAllConnections();
      await feed.stop();
      clearInterval(presenceTimer);
      await presence.leave().catch(() => {});
      await db.close();
      stopWatchingDatabase();
      log.info('coordinator stopped');
    },
  };
}

/** Creates the HTTP server, or an HTTPS one when TLS files are configured. */
function createListener(config: CoordinatorConfig, handler: Parameters<typeof createServer>[1]): Server {
  if (!config.tls) return createServer(handler);
  const options = { cert: readFileSync(config.tls.certFile), key: readFileSync(config.tls.keyFile) };
  // An HTTPS server has every method of an HTTP server that the coordinator uses.
  return createTlsServer(options, handler) as unknown as Server;
}

async function publishTokens(auth: Authenticator, config: CoordinatorConfig, log: Logger) {
  const { tokens, file, generated } = await loadTokens(config.tokens, config.dataDir);
  await auth.publish(tokens, generated);
  if (file) log.info({ tokens_file: file, kinds: generated }, 'tokens not configured are in the tokens file');
}

/** Applies migrations, retrying while the database is unreachable for up to 30 s. */
async function migrateWithRetry(db: Database, log: Logger): Promise<string[]> {
  const deadline = Date.now() + 30_000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await migrate(db.sql);
    } catch (error) {
      const code = (error as { code?: string }).code ?? '';
      const isConnectionError = /^(ECONN|CONNECT_|CONNECTION_|ETIMEDOUT|57P|08)/.test(code);
      if (!isConnectionError || Date.now() > deadline) throw error;
      log.warn({ err: error, attempt }, 'database unreachable at start-up; retrying');
      await sleep(1000);
    }
  }
}

async function routeUpgrade(
  request: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  targets: { hub: Hub; stream: EventStreamServer },
): Promise<void> {
  const path = new URL(request.url ?? '/', 'http://localhost').pathname;
  if (path === '/workers/stream') return targets.hub.handleUpgrade(request, socket, head);
  if (path === '/events/stream') return targets.stream.handleUpgrade(request, socket, head);
  socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * Polls a worker until its applied revision (the lowest of its connected
 * instances) reaches `revision`, or the timeout passes.
 */
async function waitForWorkerApplied(
  workers: WorkerService,
  workerId: string,
  revision: number,
  timeoutMs: number,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const worker = await workers.get(workerId);
    if (!worker) return false;
    if (worker.connected && worker.applied_revision >= revision) return true;
    if (Date.now() >= deadline) return false;
    await sleep(Math.min(20, deadline - Date.now()));
  }
}

/** Polls a route until its worker acknowledged `revision`, or the timeout passes. */
async function waitForApplied(
  routes: RouteService,
  routeId: string,
  revision: number,
  timeoutMs: number,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const route = await routes.get(routeId);
    if (!route) return false;
    if (route.status === 'active' && route.revision >= revision) return true;
    if (Date.now() >= deadline) return false;
    await sleep(Math.min(20, deadline - Date.now()));
  }
}
