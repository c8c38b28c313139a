import { createLogger } from '../log.ts';
import { describeConfig, parseConfig, type CoordinatorConfig } from './config.ts';
import { startCoordinator } from './coordinator.ts';

// Entry point of bin/appproxy-coordinator.

/** Graceful shutdown must finish by then, or the process exits anyway. */
const SHUTDOWN_TIMEOUT_MS = 10_000;

async function main(): Promise<void> {
  let config: CoordinatorConfig;
  try {
    config = parseConfig(process.argv.slice(2), process.env);
  } catch (error) {
    process.stderr.write(`appproxy-coordinator: ${(error as Error).message}\n`);
    process.exit(2);
  }
  const log = createLogger(config.logLevel, 'appproxy-coordinator');
  log.info({ config: describeConfig(config) }, 'coordinator starting');

  let coordinator;
  try {
    coordinator = await startCoordinator(config, log);
  } catch (error) {
    log.fatal({ err: error }, 'coordinator failed to start');
    process.exit(1);
  }

  let isStopping = false;
  const stop = (signal: string) => {
    if (isStopping) return;
    isStopping = true;
    log.info({ signal }, 'shutdown requested');
    setTimeout(() => {
      log.error('shutdown took too long; exiting');
      process.exit(1);
    }, SHUTDOWN_TIMEOUT_MS).unref();
    coordinator.close().then(
      () => process.exit(0),
      (error) => {
        log.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

void main();
