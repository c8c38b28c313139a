import { Command, InvalidArgumentError, Option } from 'commander';
import { CoordinatorClient } from './client.ts';
import { runRoutes } from './commands/routes.ts';
import { runStatus } from './commands/status.ts';
import { runTail } from './commands/tail.ts';
import { runWorkers } from './commands/workers.ts';
import {
  DEFAULT_COORDINATOR_URL,
  DEFAULT_DATA_DIR,
  parseCoordinatorUrl,
  resolveToken,
} from './config.ts';
import type { CommandContext } from './context.ts';
import { CliError } from './errors.ts';
import { createPalette, shouldUseColor } from './format.ts';

interface GlobalOptions {
  coordinatorUrl: string;
  dataDir: string;
}

/** Builds the `appproxy` command; actions report failures by raising CliError. */
export function createProgram(): Command {
  const program = new Command('appproxy')
    .description(
      'Operator CLI of the app proxy coordinator: follow route events, list routes and ' +
        'workers, and check whether workers are in sync.\n\nThe token comes from ' +
        'APPPROXY_READ_TOKEN or APPPROXY_MANAGER_TOKEN, else from <data-dir>/tokens.json.',
    )
    .addOption(
      new Option('--coordinator-url <url>', 'base URL of the coordinator')
        .env('APPPROXY_COORDINATOR_URL')
        .default(DEFAULT_COORDINATOR_URL),
    )
    .addOption(
      new Option('--data-dir <dir>', 'data directory of the coordinator, to read tokens.json')
        .env('APPPROXY_DATA_DIR')
        .default(DEFAULT_DATA_DIR),
    )
    .addOption(
      // bin/appproxy hands the file to Node as NODE_EXTRA_CA_CERTS, read only at start-up.
      new Option('--ca-file <file>', 'PEM file of the CA that signed the coordinator certificate')
        .env('APPPROXY_CA_FILE'),
    )
    .showHelpAfterError('(run "appproxy --help" for usage)');

  addTailCommand(program);
  addRoutesCommand(program);
  addWorkersCommand(program);
  addStatusCommand(program);
  return program;
}

function addTailCommand(program: Command): void {
  program
    .command('tail')
    .description('print route and worker events as they happen, reconnecting on its own')
    .addOption(
      new Option('--since <revision>', 'first print the stored events after this revision')
        .env('APPPROXY_SINCE')
        .argParser(parseRevision),
    )
    .addOption(sessionOption('only events of this session'))
    .addOption(workerOption('only events of this worker (authority or id)'))
    .addOption(jsonOption('print each event as one JSON line'))
    .action(async (options, command: Command) => {
      await runTail(await createContext(command), { ...options, json: isJson(command) });
    });
}

function addRoutesCommand(program: Command): void {
  program
    .command('routes')
    .description('list routes, following every page of the listing')
    .addOption(sessionOption('only routes of this session'))
    .addOption(workerOption('only routes on this worker (authority or id)'))
    .addOption(
      new Option('--service <name>', 'only routes of this service, e.g. jupyter').env(
        'APPPROXY_SERVICE',
      ),
    )
    .addOption(
      new Option('--page-size <n>', 'routes fetched per request, 1 to 1000')
        .env('APPPROXY_PAGE_SIZE')
        .default(500)
        .argParser(parsePageSize),
    )
    .addOption(jsonOption('print {"routes": [...]} as JSON'))
    .action(async (options, command: Command) => {
      await runRoutes(await createContext(command), { ...options, json: isJson(command) });
    });
}

function addWorkersCommand(program: Command): void {
  program
    .command('workers')
    .description('list registered workers with their mode, status and revisions')
    .addOption(jsonOption('print {"workers": [...]} as JSON'))
    .action(async (_options, command: Command) => {
      await runWorkers(await createContext(command), { json: isJson(command) });
    });
}

function addStatusCommand(program: Command): void {
  program
    .command('status')
    .description(
      'show coordinator health and, per worker, sync lag, heartbeat age and the last ' +
        'rejected route (nack); exits 1 when the coordinator is unhealthy',
    )
    .addOption(jsonOption('print {"health": {...}, "workers": [...]} as JSON'))
    .action(async (_options, command: Command) => {
      await runStatus(await createContext(command), { json: isJson(command) });
    });
}

function sessionOption(description: string): Option {
  return new Option('--session <id>', description).env('APPPROXY_SESSION');
}

function workerOption(description: string): Option {
  return new Option('--worker <worker>', description).env('APPPROXY_WORKER');
}

function jsonOption(description: string): Option {
  return new Option('--json', description).env('APPPROXY_JSON');
}

/**
 * Reads `--json`. Commander sets a flag from its variable whatever the value, so
 * `APPPROXY_JSON=0` or `false` is read here as off.
 */
function isJson(command: Command): boolean {
  if (command.getOptionValueSource('json') !== 'env') return command.opts().json === true;
  const value = (process.env.APPPROXY_JSON ?? '').trim().toLowerCase();
  return !['', '0', 'false', 'no', 'off'].includes(value);
}

async function createContext(command: Command): Promise<CommandContext> {
  const globals = command.optsWithGlobals<GlobalOptions>();
  const baseUrl = parseCoordinatorUrl(globals.coordinatorUrl);
  const token = await resolveToken(globals.dataDir, process.env);
  const palette = createPalette(shouldUseColor(process.stdout, process.env));
  return {
    client: new CoordinatorClient(baseUrl, token),
    palette,
    print: (line) => process.stdout.write(`${line}\n`),
    warn: (line) => process.stderr.write(`${line}\n`),
    nowMs: () => Date.now(),
  };
}

function parseRevision(value: string): number {
  if (!/^\d{1,15}$/.test(value)) {
    throw new InvalidArgumentError(`expected a revision, an integer of 0 or more; got "${value}"`);
  }
  return Number(value);
}

function parsePageSize(value: string): number {
  const size = Number(value);
  if (!/^\d{1,4}$/.test(value) || size < 1 || size > 1000) {
    throw new InvalidArgumentError(`expected an integer from 1 to 1000; got "${value}"`);
  }
  return size;
}

/** Writes a failure to stderr, as one clear message for CliError, and returns the exit code. */
export function reportError(error: unknown): number {
  if (error instanceof CliError) {
    process.stderr.write(`error: ${error.message}\n`);
    return error.exitCode;
  }
  const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
  process.stderr.write(`error: unexpected failure: ${message}\n`);
  return 1;
}
