import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { WorkerRegistration } from './agent.ts';
import { normalizeWildcardDomain } from './proxy.ts';

export type WorkerProtocol = 'http' | 'tcp';

/** Settings of one worker process, from flags and environment variables. */
export interface WorkerSettings {
  coordinatorUrls: string[];
  dataDir: string;
  authority: string;
  instanceId: string;
  mode: 'port' | 'wildcard';
  hostname: string;
  listenHost: string;
  portRange?: [number, number];
  wildcardDomain?: string;
  listenPort?: number;
  advertisedPort?: number;
  protocols: WorkerProtocol[];
  capacity?: number;
  logLevel: string;
}

const DESCRIPTION = [
  'Reference app proxy worker: registers with the coordinator, keeps its routes in sync over ' +
    'a WebSocket session, and proxies HTTP (with WebSocket upgrades) and TCP to them.',
  'Every option can also be set by an environment variable named APPPROXY_ plus the flag ' +
    'name in upper case, such as APPPROXY_COORDINATOR_URL; flags win. The worker token comes ' +
    'from APPPROXY_WORKER_TOKEN, else from the "worker" key of <data-dir>/tokens.json.',
].join('\n\n');

/** Builds an option whose environment variable is APPPROXY_ plus the flag name in upper case. */
function option(flags: string, description: string): Option {
  const name = /--([a-z-]+)/.exec(flags)?.[1] ?? '';
  return new Option(flags, description).env(`APPPROXY_${name.replace(/-/g, '_').toUpperCase()}`);
}

/** Defines the command line of `appproxy-worker`. */
export function buildProgram(): Command {
  return new Command('appproxy-worker')
    .description(DESCRIPTION)
    .addOption(
      option('--coordinator-url <urls>', 'coordinator base URLs, comma-separated')
        .default(['http://127.0.0.1:6030'], 'http://127.0.0.1:6030')
        .argParser(parseUrlList),
    )
    .addOption(option('--data-dir <dir>', 'directory with tokens.json').default('./data'))
    .addOption(
      // bin/appproxy-worker hands the file to Node as NODE_EXTRA_CA_CERTS, read only at start-up.
      option('--ca-file <file>', 'PEM file of the CA that signed the coordinator certificate'),
    )
    .addOption(
      option('--authority <name>', 'worker name, shared by the instances of one worker')
        .makeOptionMandatory()
        .argParser(parseAuthority),
    )
    .addOption(option('--instance-id <id>', 'id of this process (default: random per start)'))
    .addOption(
      option('--mode <mode>', 'frontend mode').choices(['port', 'wildcard']).default('port'),
    )
    .addOption(option('--hostname <host>', 'host name users reach routes at').default('127.0.0.1'))
    .addOption(
      option('--listen-host <address>', 'address the proxy listens on').default('127.0.0.1'),
    )
    .addOption(
      option('--port-range <first-last>', 'ports routes may use (port mode)').argParser(
        parsePortRange,
      ),
    )
    .addOption(option('--wildcard-domain <domain>', 'domain of route hosts (wildcard mode)'))
    .addOption(
      option('--listen-port <port>', 'port of the one listener (wildcard mode)').argParser(
        parsePort,
      ),
    )
    .addOption(
      option(
        '--advertised-port <port>',
        'port in route URLs (wildcard mode, default: the listen port)',
      ).argParser(parsePort),
    )
    .addOption(
      option('--protocols <list>', 'served protocols, comma-separated: http, tcp (port mode)')
        .default(['http'], 'http')
        .argParser(parseProtocols),
    )
    .addOption(option('--capacity <routes>', 'most routes to take').argParser(parseCapacity))
    .addOption(
      option('--log-level <level>', 'log level')
        .choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace'])
        .default('info'),
    );
}

function parseUrlList(value: string): string[] {
  const urls = value
    .split(',')
    .map((url) => url.trim())
    .filter((url) => url !== '');
  if (urls.length === 0) throw new InvalidArgumentError('Expected at least one URL.');
  for (const url of urls) {
    if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) {
      throw new InvalidArgumentError(`Expected http:// or https:// URLs, got "${url}".`);
    }
  }
  return urls;
}

function parseAuthority(value: string): string {
  if (/^[a-z0-9][a-z0-9._-]{0,63}$/.test(value)) return value;
  throw new InvalidArgumentError(
    `Expected a name matching [a-z0-9][a-z0-9._-]{0,63}, got "${value}".`,
  );
}

function parsePort(value: string): number {
  const port = Number(value);
  if (/^\d{1,5}$/.test(value) && port >= 1 && port <= 65535) return port;
  throw new InvalidArgumentError(`Expected a port from 1 to 65535, got "${value}".`);
}

function parsePortRange(value: string): [number, number] {
  const match = /^(\d{1,5})-(\d{1,5})$/.exec(value.trim());
  if (match === null) {
    throw new InvalidArgumentError(`Expected a range such as 20000-20999, got "${value}".`);
  }
  const range: [number, number] = [parsePort(match[1]), parsePort(match[2])];
  if (range[0] > range[1]) {
    const message = `Expected the first port to be at most the last, got "${value}".`;
    throw new InvalidArgumentError(message);
  }
  return range;
}

function parseProtocols(value: string): WorkerProtocol[] {
  const protocols = [...new Set(value.split(',').map((item) => item.trim()))];
  for (const protocol of protocols) {
    if (protocol !== 'http' && protocol !== 'tcp') {
      throw new InvalidArgumentError(`Expected http, tcp or http,tcp, got "${value}".`);
    }
  }
  return protocols as WorkerProtocol[];
}

function parseCapacity(value: string): number {
  if (/^\d{1,8}$/.test(value)) return Number(value);
  throw new InvalidArgumentError(`Expected a whole number of routes, got "${value}".`);
}

/** Finds the first problem among options that depend on each other. */
function findSettingsProblem(settings: WorkerSettings): string | undefined {
  if (settings.mode === 'port') {
    if (settings.portRange === undefined) return 'option --port-range is required in port mode';
    return undefined;
  }
  if (settings.wildcardDomain === undefined) {
    return 'option --wildcard-domain is required in wildcard mode';
  }
  if (settings.listenPort === undefined) return 'option --listen-port is required in wildcard mode';
  if (settings.protocols.includes('tcp')) return 'protocol tcp is served only in port mode';
  return undefined;
}

/** Parses the command line and environment into settings. Exits on usage errors. */
export function parseSettings(argv: string[] = process.argv): WorkerSettings {
  const program = buildProgram().parse(argv);
  const options = program.opts();
  const wildcardDomain = options.wildcardDomain as string | undefined;
  const settings: WorkerSettings = {
    coordinatorUrls: options.coordinatorUrl as string[],
    dataDir: options.dataDir as string,
    authority: options.authority as string,
    instanceId: (options.instanceId as string | undefined) ?? randomUUID(),
    mode: options.mode as WorkerSettings['mode'],
    hostname: options.hostname as string,
    listenHost: options.listenHost as string,
    portRange: options.portRange as [number, number] | undefined,
    wildcardDomain: normalizeWildcardDomain(wildcardDomain ?? '') || undefined,
    listenPort: options.listenPort as number | undefined,
    advertisedPort: options.advertisedPort as number | undefined,
    protocols: options.protocols as WorkerProtocol[],
    capacity: options.capacity as number | undefined,
    logLevel: options.logLevel as string,
  };
  const problem = findSettingsProblem(settings);
  if (problem !== undefined) program.error(`error: ${problem}`, { exitCode: 2 });
  return settings;
}

/**
 * Reads the worker token: APPPROXY_WORKER_TOKEN, else the `worker` key of
 * `<data-dir>/tokens.json` that the coordinator writes. The variable may list several
 * tokens, comma-separated, as the coordinator accepts, and the worker sends the first.
 */
export async function readWorkerToken(dataDir: string): Promise<string> {
  const fromEnv = process.env.APPPROXY_WORKER_TOKEN?.split(',')[0].trim();
  if (fromEnv) return fromEnv;

  const file = path.resolve(dataDir, 'tokens.json');
  let tokens: unknown;
  try {
    tokens = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new Error(
      `No worker token: APPPROXY_WORKER_TOKEN is unset and ${file} could not be read (${reason})`,
    );
  }
  const token = (tokens as { worker?: unknown } | null)?.worker;
  if (typeof token === 'string' && token !== '') return token;
  throw new Error(`No worker token: ${file} has no "worker" key`);
}

/** Builds the body of `POST /workers/register` from the settings. */
export function registrationOf(settings: WorkerSettings): WorkerRegistration {
  const registration: WorkerRegistration = {
    authority: settings.authority,
    instance_id: settings.instanceId,
    frontend_mode: settings.mode,
    hostname: settings.hostname,
    protocols: settings.protocols,
  };
  if (settings.capacity !== undefined) registration.capacity = settings.capacity;
  if (settings.mode === 'port') {
    registration.port_range = settings.portRange;
    return registration;
  }
  registration.wildcard_domain = settings.wildcardDomain;
  registration.advertised_port = settings.advertisedPort ?? settings.listenPort;
  return registration;
}
