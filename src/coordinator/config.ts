import { Command, InvalidArgumentError } from 'commander';
import type { TokenSettings } from './tokens.ts';

/** Effective settings of one coordinator process. */
export interface CoordinatorConfig {
  host: string;
  port: number;
  databaseUrl?: string;
  dataDir: string;
  logLevel: string;
  heartbeatIntervalMs: number;
  heartbeatMisses: number;
  tokens: TokenSettings;
  poolSize: number;
  changeLogMaxAgeMs: number;
  changeLogMaxCount: number;
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

function integer(name: string, min: number, max: number) {
  return (value: string): number => {
    const number = Number(value);
    if (!/^\d+$/.test(value) || number < min || number > max) {
      throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}, got "${value}".`);
    }
    return number;
  };
}

function splitTokens(value: string | undefined): string[] | undefined {
  const tokens = value?.split(',').map((token) => token.trim()).filter(Boolean);
  return tokens?.length ? tokens : undefined;
}

/** Reads flags and environment variables; a flag wins over its variable. */
export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): CoordinatorConfig {
  const program = new Command('appproxy-coordinator')
    .description('Control plane for app proxy workers: REST API and worker sessions on one port.')
    .option('--host <address>', 'listen address (APPPROXY_HOST)', env.APPPROXY_HOST ?? '127.0.0.1')
    .option('--port <port>', 'REST and WebSocket port (APPPROXY_PORT)', integer('--port', 0, 65535), numberFrom(env.APPPROXY_PORT, 6030, '--port', 0, 65535))
    .option('--database-url <url>', 'PostgreSQL URL; unset runs an embedded database (DATABASE_URL)', env.DATABASE_URL)
    .option('--data-dir <path>', 'embedded database and generated tokens (APPPROXY_DATA_DIR)', env.APPPROXY_DATA_DIR ?? './data')
    .option('--log-level <level>', `one of ${LOG_LEVELS.join(', ')} (APPPROXY_LOG_LEVEL)`, env.APPPROXY_LOG_LEVEL ?? 'info')
    .option('--pool-size <count>', 'database connections (APPPROXY_POOL_SIZE)', integer('--pool-size', 2, 200), numberFrom(env.APPPROXY_POOL_SIZE, 10, '--pool-size', 2, 200))
    .addHelpText(
      'after',
      '\nOther settings come from the environment only:\n' +
        '  APPPROXY_MANAGER_TOKEN, APPPROXY_WORKER_TOKEN, APPPROXY_READ_TOKEN  comma-separated tokens;\n' +
        '      unset ones are generated into <data-dir>/tokens.json\n' +
        '  APPPROXY_HEARTBEAT_INTERVAL_MS (5000), APPPROXY_HEARTBEAT_MISSES (3)\n' +
        '  APPPROXY_CHANGELOG_MAX_AGE_S (86400), APPPROXY_CHANGELOG_MAX_COUNT (100000)\n',
    )
    .exitOverride((error) => process.exit(error.exitCode))
    .parse(argv, { from: 'user' });

  const options = program.opts();
  if (!LOG_LEVELS.includes(options.logLevel)) {
    throw new InvalidArgumentError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, got "${options.logLevel}".`);
  }
  return {
    host: options.host,
    port: options.port,
    databaseUrl: options.databaseUrl || undefined,
    dataDir: options.dataDir,
    logLevel: options.logLevel,
    poolSize: options.poolSize,
    heartbeatIntervalMs: numberFrom(env.APPPROXY_HEARTBEAT_INTERVAL_MS, 5000, 'APPPROXY_HEARTBEAT_INTERVAL_MS', 100, 3_600_000),
    heartbeatMisses: numberFrom(env.APPPROXY_HEARTBEAT_MISSES, 3, 'APPPROXY_HEARTBEAT_MISSES', 1, 100),
    changeLogMaxAgeMs: 1000 * numberFrom(env.APPPROXY_CHANGELOG_MAX_AGE_S, 86_400, 'APPPROXY_CHANGELOG_MAX_AGE_S', 1, 31_536_000),
    changeLogMaxCount: numberFrom(env.APPPROXY_CHANGELOG_MAX_COUNT, 100_000, 'APPPROXY_CHANGELOG_MAX_COUNT', 1, 100_000_000),
    tokens: {
      manager: splitTokens(env.APPPROXY_MANAGER_TOKEN),
      worker: splitTokens(env.APPPROXY_WORKER_TOKEN),
      read: splitTokens(env.APPPROXY_READ_TOKEN),
    },
  };
}

function numberFrom(value: string | undefined, fallback: number, name: string, min: number, max: number) {
  return value === undefined || value === '' ? fallback : integer(name, min, max)(value);
}

/** The settings with secrets left out, for the start-up log. */
export function describeConfig(config: CoordinatorConfig): Record<string, unknown> {
  const { tokens, databaseUrl, ...rest } = config;
  return {
    ...rest,
    database: databaseUrl ? redactUrl(databaseUrl) : 'embedded',
    configured_tokens: Object.entries(tokens).filter(([, list]) => list).map(([kind]) => kind),
  };
}

function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return 'unparseable URL';
  }
}
