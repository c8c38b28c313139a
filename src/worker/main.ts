import { pino, type Logger } from 'pino';
import { WorkerAgent } from './agent.ts';
import { WorkerError } from './errors.ts';
import { WorkerProxy } from './proxy.ts';
import { parseSettings, readWorkerToken, registrationOf, type WorkerSettings } from './settings.ts';
import { RouteTable } from './table.ts';

/** Time between two log lines about failures of the same route's backends, in milliseconds. */
const BACKEND_ERROR_LOG_INTERVAL_MS = 10_000;

function logAgentEvents(agent: WorkerAgent, logger: Logger): void {
  agent.on('registered', (info) => {
    const fields = {
      coordinator_url: info.coordinatorUrl,
      worker_id: info.workerId,
      instance_id: info.instanceId,
      generation: info.generation,
      epoch: info.epoch,
      revision: info.revision,
      is_new: info.isNew,
    };
    logger.info(fields, 'registered with the coordinator');
  });
  agent.on('connected', ({ coordinatorUrl, resumed }) => {
    logger.info({ coordinator_url: coordinatorUrl, resumed }, 'session opened');
  });
  agent.on('disconnected', (info) => {
    const fields = {
      coordinator_url: info.coordinatorUrl,
      code: info.code,
      reason: info.reason,
      upgrade_status: info.upgradeStatus,
      next_step: info.nextStep,
      retry_in_ms: info.retryInMs,
    };
    logger[info.nextStep === 'stop' ? 'info' : 'warn'](fields, 'session closed');
  });
  agent.on('applied', ({ kind, revision, routeCount }) => {
    const level = kind === 'snapshot' ? 'info' : 'debug';
    logger[level]({ kind, revision, route_count: routeCount }, `applied ${kind}`);
  });
  agent.on('mismatch', ({ kind, revision, error, dropped }) => {
    logger.warn({ kind, revision, dropped }, `${error}, so the worker requested a snapshot`);
  });
  agent.on('error', (error) => logger.warn(errorFields(error), error.message));
}

function logProxyEvents(proxy: WorkerProxy, agent: WorkerAgent, logger: Logger): void {
  proxy.on('listening', ({ port }) => logger.debug({ port }, 'listening'));
  proxy.on('unlistened', ({ port }) => logger.debug({ port }, 'stopped listening'));
  proxy.on('listenError', (error, route) => {
    logger.error({ ...errorFields(error), port: error.port, route_id: route?.id }, error.message);
    // Reported as rejected, so the coordinator records it and sends the route again later.
    if (route !== undefined) agent.reject(route.revision, error.message);
  });

  // At most one line per route and interval, since a dead backend fails every request.
  const lastLoggedAt = new Map<string, number>();
  proxy.on('backendError', ({ routeId, backend, error }) => {
    const now = Date.now();
    if (now - (lastLoggedAt.get(routeId) ?? 0) < BACKEND_ERROR_LOG_INTERVAL_MS) return;
    lastLoggedAt.set(routeId, now);
    const fields = { route_id: routeId, backend, error: error.message };
    logger.warn(fields, 'backend could not be reached');
  });
}

/**
 * Log fields of an error: the code and cause of expected failures such as a refused
 * connection, and the whole error with its stack for anything else.
 */
function errorFields(error: Error): Record<string, unknown> {
  if (!(error instanceof WorkerError)) return { err: error };
  const cause = error.cause instanceof Error ? error.cause.message : undefined;
  return { code: error.code, cause };
}

function startFields(settings: WorkerSettings, proxy: WorkerProxy): Record<string, unknown> {
  return {
    coordinator_urls: settings.coordinatorUrls,
    authority: settings.authority,
    instance_id: settings.instanceId,
    mode: settings.mode,
    listen_host: settings.listenHost,
    port_range: settings.portRange,
    wildcard_domain: settings.wildcardDomain,
    listen_port: proxy.wildcardPort ?? undefined,
  };
}

/** Closes the session and the listeners, then exits. A second call waits for the first. */
function createShutdown(agent: WorkerAgent, proxy: WorkerProxy, logger: Logger) {
  let stopping: Promise<void> | null = null;
  return (exitCode: number): Promise<void> => {
    stopping ??= Promise.all([agent.close(), proxy.close()]).then(() => {
      logger.info({ exit_code: exitCode }, 'worker stopped');
      process.exit(exitCode);
    });
    return stopping;
  };
}

function createWorker(settings: WorkerSettings, workerToken: string) {
  const table = new RouteTable();
  const proxy = new WorkerProxy({
    table,
    mode: settings.mode,
    listenHost: settings.listenHost,
    listenPort: settings.listenPort,
    wildcardDomain: settings.wildcardDomain,
  });
  const agent = new WorkerAgent({
    coordinatorUrls: settings.coordinatorUrls,
    workerToken,
    registration: registrationOf(settings),
    table,
    collectStats: () => proxy.collectStats(),
  });
  return { proxy, agent };
}

async function runWorker(settings: WorkerSettings, logger: Logger): Promise<void> {
  const { proxy, agent } = createWorker(settings, await readWorkerToken(settings.dataDir));
  logAgentEvents(agent, logger);
  logProxyEvents(proxy, agent, logger);

  const shutdown = createShutdown(agent, proxy, logger);
  agent.on('stopped', ({ reason, detail }) => {
    logger.fatal({ reason }, `${detail}, stopping`);
    void shutdown(1);
  });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      logger.info({ signal }, 'stopping');
      void shutdown(0);
    });
  }

  await proxy.start();
  agent.start();
  logger.info(startFields(settings, proxy), 'worker started');
}

const settings = parseSettings();
const logger = pino({ name: 'appproxy-worker', level: settings.logLevel });
try {
  await runWorker(settings, logger);
} catch (error) {
  logger.fatal({ err: error }, `worker failed to start: ${(error as Error).message}`);
  process.exit(1);
}
