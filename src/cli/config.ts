import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { CliError } from './errors.ts';

export const DEFAULT_COORDINATOR_URL = 'http://127.0.0.1:6030';
export const DEFAULT_DATA_DIR = './data';

/** Address of the coordinator and the token that authenticates to it. */
export interface Connection {
  baseUrl: URL;
  token: string;
}

/** Checks that `value` is an http or https URL and returns it parsed. */
export function parseCoordinatorUrl(value: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new CliError(
      `Invalid coordinator URL "${value}": expected e.g. ${DEFAULT_COORDINATOR_URL}`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new CliError(`Invalid coordinator URL "${value}": expected an http:// or https:// URL`);
  }
  return url;
}

/**
 * Finds the bearer token: `APPPROXY_READ_TOKEN`, then `APPPROXY_MANAGER_TOKEN`, then the
 * `read` and `manager` keys of `<dataDir>/tokens.json` that the coordinator writes.
 */
export async function resolveToken(dataDir: string, env: NodeJS.ProcessEnv): Promise<string> {
  const fromEnv = firstToken(env.APPPROXY_READ_TOKEN) ?? firstToken(env.APPPROXY_MANAGER_TOKEN);
  if (fromEnv !== undefined) return fromEnv;

  const file = path.resolve(dataDir, 'tokens.json');
  const tokens = await readTokensFile(file);
  const fromFile = firstToken(tokens?.read) ?? firstToken(tokens?.manager);
  if (fromFile !== undefined) return fromFile;

  const found = tokens === undefined ? 'does not exist' : 'has no "read" or "manager" key';
  throw new CliError(
    `No token: ${file} ${found}. Set APPPROXY_READ_TOKEN, or point --data-dir ` +
      '(APPPROXY_DATA_DIR) at the data directory of the coordinator.',
  );
}

/** Reads the token file, or returns undefined when it does not exist. */
export async function readTokensFile(file: string): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CliError(`Cannot read ${file}: ${(error as Error).message}`, { cause: error });
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed !== null && typeof parsed === 'object') return parsed as Record<string, unknown>;
  } catch {
    // Reported below without echoing the content, because the file contains secrets.
  }
  throw new CliError(`Invalid token file ${file}: expected a JSON object with a "read" key`);
}

/** Picks the first of a comma-separated list of tokens, as the coordinator accepts several. */
function firstToken(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  const token = value.split(',')[0].trim();
  return token === '' ? undefined : token;
}
