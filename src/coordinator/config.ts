import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { Command, CommanderError } from 'commander';
import { parse as parseToml } from 'smol-toml';
import { isHost } from '../../proto/fields.ts';
import type { TokenSettings } from './tokens.ts';

// Settings of the coordinator come from four places. A flag wins over the environment, the
// environment over the config file (`--config`, TOML), and the file over the default.

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
  changeLogCompactionIntervalMs: number;
  /** How long a worker's socket may stay backed up before its session closes with 4429. */
  sessionSendTimeoutMs: number;
  /** Sessions whose hello or snapshot is worked on at once; the rest wait in line. */
  sessionAdmissionConcurrency: number;
  /** PEM files to serve HTTPS and WSS with; both set or both unset. */
  tls?: { certFile: string; keyFile: string };
}

/** The action the command line requests, with the settings it needs. */
export type ParsedArguments =
  | { kind: 'run' | 'print-config'; config: CoordinatorConfig }
  /** `--help` was given and the help text is already printed. */
  | { kind: 'help' };

/** Invalid settings or flags; the message names each setting, its source and its value. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Value = string | number | string[] | undefined;

interface Setting {
  /** Key in the config file and in `--print-config` output. */
  key: string;
  env: string;
  /** Secrets have no flag, so they never show in the process list. */
  flag?: string;
  argument?: string;
  description: string;
  defaultValue?: Value;
  isSecret?: boolean;
  /** Converts a raw value; throws an Error whose message states the expected form. */
  parse(raw: unknown): Value;
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/** Shown in place of a secret in `--print-config`, logs and error messages. */
export const REDACTED = '***';

const SETTINGS: Setting[] = [
  {
    key: 'host',
    env: 'APPPROXY_HOST',
    flag: '--host',
    argument: '<address>',
    description: 'listen address',
    defaultValue: '127.0.0.1',
    parse: parseHost,
  },
  {
    key: 'port',
    env: 'APPPROXY_PORT',
    flag: '--port',
    argument: '<port>',
    description: 'REST and WebSocket port; 0 picks a free one',
    defaultValue: 6030,
    parse: integerParser(0, 65535),
  },
  {
    key: 'database_url',
    env: 'DATABASE_URL',
    flag: '--database-url',
    argument: '<url>',
    description: 'PostgreSQL URL; unset runs an embedded database in the data directory',
    parse: parseDatabaseUrl,
  },
  {
    key: 'data_dir',
    env: 'APPPROXY_DATA_DIR',
    flag: '--data-dir',
    argument: '<path>',
    description: 'embedded database and generated tokens',
    defaultValue: './data',
    parse: parsePath,
  },
  {
    key: 'tls_cert',
    env: 'APPPROXY_TLS_CERT',
    flag: '--tls-cert',
    argument: '<file>',
    description: 'PEM certificate chain; with --tls-key, serve HTTPS and WSS',
    parse: parseOptionalPath,
  },
  {
    key: 'tls_key',
    env: 'APPPROXY_TLS_KEY',
    flag: '--tls-key',
    argument: '<file>',
    description: 'PEM private key of --tls-cert',
    parse: parseOptionalPath,
  },
  {
    key: 'log_level',
    env: 'APPPROXY_LOG_LEVEL',
    flag: '--log-level',
    argument: '<level>',
    description: `one of ${LOG_LEVELS.join(', ')}`,
    defaultValue: 'info',
    parse: parseLogLevel,
  },
  {
    key: 'pool_size',
    env: 'APPPROXY_POOL_SIZE',
    flag: '--pool-size',
    argument: '<count>',
    description: 'PostgreSQL connections',
    defaultValue: 10,
    parse: integerParser(2, 200),
  },
  {
    key: 'heartbeat_interval_ms',
    env: 'APPPROXY_HEARTBEAT_INTERVAL_MS',
    flag: '--heartbeat-interval-ms',
    argument: '<ms>',
    description: 'worker heartbeat interval, in milliseconds',
    defaultValue: 5000,
    parse: integerParser(100, 3_600_000),
  },
  {
    key: 'heartbeat_misses',
    env: 'APPPROXY_HEARTBEAT_MISSES',
    flag: '--heartbeat-misses',
    argument: '<count>',
    description: 'missed heartbeats before a worker is lost',
    defaultValue: 3,
    parse: integerParser(1, 100),
  },
  {
    key: 'changelog_max_age_s',
    env: 'APPPROXY_CHANGELOG_MAX_AGE_S',
    flag: '--changelog-max-age-s',
    argument: '<seconds>',
    description: 'change-log rows older than this are compacted, in seconds',
    defaultValue: 86_400,
    parse: integerParser(1, 31_536_000),
  },
  {
    key: 'changelog_max_count',
    env: 'APPPROXY_CHANGELOG_MAX_COUNT',
    flag: '--changelog-max-count',
    argument: '<count>',
    description: 'change-log rows kept at most',
    defaultValue: 100_000,
    parse: integerParser(1, 100_000_000),
  },
  {
    key: 'changelog_compaction_interval_s',
    env: 'APPPROXY_CHANGELOG_COMPACTION_INTERVAL_S',
    flag: '--changelog-compaction-interval-s',
    argument: '<seconds>',
    description: 'time between two compactions of the change log, in seconds',
    defaultValue: 30,
    parse: integerParser(1, 86_400),
  },
  {
    key: 'session_send_timeout_ms',
    env: 'APPPROXY_SESSION_SEND_TIMEOUT_MS',
    flag: '--session-send-timeout-ms',
    argument: '<ms>',
    description:
      'a worker session whose socket stays over 1 MiB of unsent data this long is closed ' +
      'with 4429, in milliseconds',
    defaultValue: 10_000,
    parse: integerParser(100, 600_000),
  },
  {
    key: 'session_admission_concurrency',
    env: 'APPPROXY_SESSION_ADMISSION_CONCURRENCY',
    flag: '--session-admission-concurrency',
    argument: '<count>',
    description: 'worker sessions whose hello or snapshot is worked on at once; others wait',
    defaultValue: 8,
    parse: integerParser(1, 1000),
  },
  ...(['manager', 'worker', 'read'] as const).map(
    (kind): Setting => ({
      key: `${kind}_token`,
      env: `APPPROXY_${kind.toUpperCase()}_TOKEN`,
      description: `${kind} bearer tokens`,
      isSecret: true,
      parse: parseTokens,
    }),
  ),
];

/** Every key a config file may contain, in the order `--print-config` prints them. */
export const SETTING_KEYS: readonly string[] = SETTINGS.map((setting) => setting.key);

/**
 * Reads flags, the environment and the config file into the effective
 * settings; a flag wins over the environment, which wins over the file.
 *
 * @throws ConfigError naming every invalid setting with its source and value.
 */
export function parseArguments(argv: string[], env: NodeJS.ProcessEnv): ParsedArguments {
  const program = buildProgram();
  try {
    program.parse(argv, { from: 'user' });
  } catch (error) {
    if (!(error instanceof CommanderError)) throw error;
    if (error.exitCode === 0) return { kind: 'help' };
    throw new ConfigError(error.message.replace(/^error: /, ''));
  }
  const flags = program.opts();
  const configFile = nonEmpty(flags.config) ?? nonEmpty(env.APPPROXY_CONFIG);
  const file = configFile === undefined ? {} : readConfigFile(configFile);
  const values = resolveSettings({ flags, env, file, configFile });
  const config = toConfig(values);
  const [certFile, keyFile] = [values.get('tls_cert'), values.get('tls_key')] as Array<string | undefined>;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new ConfigError('tls_cert and tls_key must be set together: give both files, or neither.');
  }
  if (certFile !== undefined && keyFile !== undefined) config.tls = { certFile, keyFile };
  return { kind: flags.printConfig ? 'print-config' : 'run', config };
}

/** Like `parseArguments`, for callers that only start coordinators (tests, embedders). */
export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): CoordinatorConfig {
  const parsed = parseArguments(argv, env);
  if (parsed.kind === 'help') throw new ConfigError('--help is not a configuration');
  return parsed.config;
}

function buildProgram(): Command {
  const program = new Command('appproxy-coordinator')
    .description('Control plane for app proxy workers: REST API and worker sessions on one port.')
    .option('--config <file>', 'TOML file of settings, keys as listed below (env APPPROXY_CONFIG)')
    .option('--print-config', 'print the effective settings as JSON, secrets redacted, and exit');
  for (const setting of SETTINGS) {
    if (!setting.flag) continue;
    const fallback = setting.defaultValue === undefined ? '' : `; default ${setting.defaultValue}`;
    const sources = `env ${setting.env}, file key ${setting.key}${fallback}`;
    const description = `${setting.description} (${sources})`;
    program.option(`${setting.flag} ${setting.argument}`, description);
  }
  return program
    .addHelpText('after', helpEpilogue())
    .exitOverride()
    .configureOutput({ writeErr: () => {}, outputError: () => {} });
}

function helpEpilogue(): string {
  return [
    '',
    'Bearer tokens come from the environment or the config file only, never from flags:',
    '  APPPROXY_MANAGER_TOKEN, APPPROXY_WORKER_TOKEN, APPPROXY_READ_TOKEN (file keys',
    '  manager_token, worker_token, read_token): comma-separated to accept several while',
    '  rotating. Kinds left unset are generated once into <data-dir>/tokens.json.',
    '',
    'A flag wins over the environment, and the environment over the config file.',
    '',
  ].join('\n');
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`Cannot read config file ${file}: ${(error as Error).message}`);
  }
  let parsed: Record<string, unknown>;
  try {
    parsed = parseToml(text);
  } catch (error) {
    throw new ConfigError(`Config file ${file} is not valid TOML: ${(error as Error).message}`);
  }
  const unknown = Object.keys(parsed).filter((key) => !SETTING_KEYS.includes(key));
  if (unknown.length > 0) {
    throw new ConfigError(
      `Config file ${file} has unknown keys ${unknown.join(', ')}; ` +
        `known keys are ${SETTING_KEYS.join(', ')}.`,
    );
  }
  return parsed;
}

interface Sources {
  flags: Record<string, unknown>;
  env: NodeJS.ProcessEnv;
  file: Record<string, unknown>;
  configFile: string | undefined;
}

/** Picks each setting from the first source that sets it and checks it. */
function resolveSettings(sources: Sources): Map<string, Value> {
  const values = new Map<string, Value>();
  const problems: string[] = [];
  for (const setting of SETTINGS) {
    const { raw, origin } = pickRaw(setting, sources);
    if (raw === undefined) {
      values.set(setting.key, setting.defaultValue);
      continue;
    }
    try {
      values.set(setting.key, setting.parse(raw));
    } catch (error) {
      const valueText = describeRawValue(setting, raw);
      problems.push(`${setting.key} = ${valueText} (from ${origin}): ${(error as Error).message}`);
    }
  }
  if (problems.length === 1) throw new ConfigError(`Invalid setting ${problems[0]}`);
  if (problems.length > 1) {
    throw new ConfigError(`Invalid settings:\n  ${problems.join('\n  ')}`);
  }
  return values;
}

function pickRaw(setting: Setting, sources: Sources): { raw: unknown; origin: string } {
  const flagValue = setting.flag ? sources.flags[flagProperty(setting.flag)] : undefined;
  if (flagValue !== undefined) return { raw: flagValue, origin: setting.flag as string };
  const envValue = nonEmpty(sources.env[setting.env]);
  if (envValue !== undefined) return { raw: envValue, origin: setting.env };
  const fileValue = sources.file[setting.key];
  if (fileValue === undefined) return { raw: undefined, origin: 'default' };
  return { raw: fileValue, origin: `config file ${sources.configFile}` };
}

/** `--heartbeat-interval-ms` → `heartbeatIntervalMs`, as commander names options. */
function flagProperty(flag: string): string {
  return flag.slice(2).replace(/-([a-z])/g, (_, letter: string) => letter.toUpperCase());
}

function describeRawValue(setting: Setting, raw: unknown): string {
  if (setting.isSecret) return `${REDACTED} (secret, not shown)`;
  if (setting.key === 'database_url') return JSON.stringify(redactDatabaseUrl(String(raw)));
  const text = JSON.stringify(raw) ?? String(raw);
  return text.length > 120 ? `${text.slice(0, 117)}...` : text;
}

function toConfig(values: Map<string, Value>): CoordinatorConfig {
  const get = <T extends Value>(key: string) => values.get(key) as T;
  return {
    host: get<string>('host'),
    port: get<number>('port'),
    databaseUrl: get<string | undefined>('database_url'),
    dataDir: get<string>('data_dir'),
    logLevel: get<string>('log_level'),
    poolSize: get<number>('pool_size'),
    heartbeatIntervalMs: get<number>('heartbeat_interval_ms'),
    heartbeatMisses: get<number>('heartbeat_misses'),
    changeLogMaxAgeMs: 1000 * get<number>('changelog_max_age_s'),
    changeLogMaxCount: get<number>('changelog_max_count'),
    changeLogCompactionIntervalMs: 1000 * get<number>('changelog_compaction_interval_s'),
    sessionSendTimeoutMs: get<number>('session_send_timeout_ms'),
    sessionAdmissionConcurrency: get<number>('session_admission_concurrency'),
    tokens: {
      manager: get<string[] | undefined>('manager_token'),
      worker: get<string[] | undefined>('worker_token'),
      read: get<string[] | undefined>('read_token'),
    },
  };
}

/**
 * Lists the effective settings under their config-file keys, with tokens and
 * the database password redacted. `--print-config` prints this list, and the
 * start-up log line contains it.
 */
export function describeConfig(config: CoordinatorConfig): Record<string, unknown> {
  const redactTokens = (tokens: string[] | undefined) => tokens?.map(() => REDACTED) ?? null;
  return {
    host: config.host,
    port: config.port,
    database_url: config.databaseUrl === undefined ? null : redactDatabaseUrl(config.databaseUrl),
    data_dir: config.dataDir,
    tls_cert: config.tls?.certFile ?? null,
    tls_key: config.tls?.keyFile ?? null,
    log_level: config.logLevel,
    pool_size: config.poolSize,
    heartbeat_interval_ms: config.heartbeatIntervalMs,
    heartbeat_misses: config.heartbeatMisses,
    changelog_max_age_s: Math.round(config.changeLogMaxAgeMs / 1000),
    changelog_max_count: config.changeLogMaxCount,
    changelog_compaction_interval_s: Math.round(config.changeLogCompactionIntervalMs / 1000),
    session_send_timeout_ms: config.sessionSendTimeoutMs,
    session_admission_concurrency: config.sessionAdmissionConcurrency,
    manager_token: redactTokens(config.tokens.manager),
    worker_token: redactTokens(config.tokens.worker),
    read_token: redactTokens(config.tokens.read),
  };
}

/** Replaces the password of a database URL, in its user part or its query string. */
export function redactDatabaseUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return `${REDACTED} (not a URL; not shown because it may hold a password)`;
  }
  if (parsed.password) parsed.password = REDACTED;
  for (const name of ['password', 'sslpassword']) {
    if (parsed.searchParams.has(name)) parsed.searchParams.set(name, REDACTED);
  }
  return parsed.toString();
}

function nonEmpty(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}

function integerParser(min: number, max: number): (raw: unknown) => number {
  return (raw) => {
    const number = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : raw;
    const isValid = typeof number === 'number' && Number.isInteger(number);
    if (!isValid || number < min || number > max) {
      throw new Error(`must be an integer from ${min} to ${max}`);
    }
    return number;
  };
}

function parseHost(raw: unknown): string {
  if (typeof raw !== 'string' || !isHost(raw)) {
    throw new Error('must be an IP address or a DNS hostname, such as 0.0.0.0 or ::');
  }
  return raw;
}

function parsePath(raw: unknown): string {
  if (typeof raw !== 'string' || raw === '') throw new Error('must be a directory path');
  return raw;
}

/**
 * Checks that the TLS files can be read and that the key belongs to the
 * certificate, so a bad pair stops start-up before the database is opened.
 *
 * @throws ConfigError naming the setting and the file.
 */
export function checkTlsFiles(config: CoordinatorConfig): void {
  if (!config.tls) return;
  const { certFile, keyFile } = config.tls;
  const read = (key: string, file: string) => {
    try {
      return readFileSync(file);
    } catch (error) {
      throw new ConfigError(`${key} "${file}" cannot be read: ${(error as Error).message}`);
    }
  };
  const cert = read('tls_cert', certFile);
  const key = read('tls_key', keyFile);
  try {
    createSecureContext({ cert, key });
  } catch (error) {
    throw new ConfigError(
      `tls_cert "${certFile}" and tls_key "${keyFile}" do not form a usable pair: ` +
        `${(error as Error).message}`,
    );
  }
}

function parseOptionalPath(raw: unknown): string | undefined {
  if (raw === undefined || raw === '') return undefined;
  if (typeof raw !== 'string') throw new Error('must be a file path');
  return raw;
}

function parseLogLevel(raw: unknown): string {
  if (typeof raw !== 'string' || !LOG_LEVELS.includes(raw)) {
    throw new Error(`must be one of ${LOG_LEVELS.join(', ')}`);
  }
  return raw;
}

function parseDatabaseUrl(raw: unknown): string | undefined {
  if (raw === '') return undefined;
  const expected = 'must be a PostgreSQL URL such as postgres://user@host:5432/appproxy';
  if (typeof raw !== 'string' || !URL.canParse(raw)) throw new Error(expected);
  const protocol = new URL(raw).protocol;
  if (protocol !== 'postgres:' && protocol !== 'postgresql:') throw new Error(expected);
  return raw;
}

/** Takes a comma-separated string, or in the config file also an array of strings. */
function parseTokens(raw: unknown): string[] | undefined {
  const expected = 'must be tokens separated by commas (or a list of strings in the file)';
  const isList = Array.isArray(raw) && raw.every((item) => typeof item === 'string');
  if (typeof raw !== 'string' && !isList) throw new Error(expected);
  const parts = (isList ? (raw as string[]) : String(raw).split(',')).map((part) => part.trim());
  const tokens = parts.filter((part) => part !== '');
  // A bearer token ends at the first whitespace, so such a token could never match.
  if (tokens.some((token) => /\s/.test(token))) throw new Error(`${expected}, with no whitespace`);
  return tokens.length > 0 ? tokens : undefined;
}
