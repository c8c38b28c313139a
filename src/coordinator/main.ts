import { createLogger, type Logger } from '../log.ts';
import {
  checkTlsFiles,
  ConfigError,
  describeConfig,
  parseArguments,
  type CoordinatorConfig,
} from './config.ts';
import type { Coordinator } from './coordinator.ts';

// Entry point of bin/appproxy-coordinator.

/** Graceful shutdown must finish by then, or the process exits anyway. */
const SHUTDOWN_TIMEOUT_MS = 10_000;

/** Exit status for invalid flags or settings, as for other command-line usage errors. */
const EXIT_USAGE = 2;

async function main(): Promise<void> {
  const config = readConfig();
  const log = createLogger(config.logLevel, 'appproxy-coordinator');
  log.info({ config: describeConfig(config), pid: process.pid }, 'coordinator starting');

  let coordinator: Coordinator;
  try {
    // Loaded only now, so --help, --print-config and settings errors return quickly.
    const { startCoordinator } = await import('./coordinator.ts');
    coordinator = await startCoordinator(config, log);
  } catch (error) {
    log.fatal({ err: error }, 'coordinator failed to start');
    process.exit(1);
  }
  handleSignals(coordinator, log);
}

/** Parses the command line; prints help or the settings and exits when asked to. */
function readConfig(): CoordinatorConfig {
  try {
    const parsed = parseArguments(process.argv.slice(2), process.env);
    if (parsed.kind === 'help') process.exit(0);
    if (parsed.kind === 'run') {
      checkTlsFiles(parsed.config);
      return parsed.config;
    }
    process.stdout.write(`${JSON.stringify(describeConfig(parsed.config), null, 2)}\n`);
    process.exit(0);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`appproxy-coordinator: ${error.message}\n`);
    process.exit(EXIT_USAGE);
  }
}

/**
 * Stops on SIGTERM or SIGINT: the coordinator stops accepting, lets requests
 * in flight finish and closes worker sessions with 1012. A shutdown past
 * SHUTDOWN_TIMEOUT_MS exits with status 1; repeated signals change nothing.
 */
function handleSignals(coordinator: Coordinator, log: Logger): void {
  let isStopping = false;
  const stop = (signal: string) => {
    if (isStopping) return;
    isStopping = true;
    log.info({ signal, timeout_ms: SHUTDOWN_TIMEOUT_MS }, 'shutdown requested');
    setTimeout(() => {
      log.error({ timeout_ms: SHUTDOWN_TIMEOUT_MS }, 'shutdown took too long; exiting');
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
