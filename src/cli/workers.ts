import type { Worker } from '../../proto/index.ts';
import type { CoordinatorClient } from './client.ts';
import { CliError } from './errors.ts';

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Fetches every registered worker. */
export async function fetchWorkers(client: CoordinatorClient): Promise<Worker[]> {
  const body = await client.get<{ workers: Worker[] }>('/workers');
  return body.workers;
}

/** Maps worker ids to authorities, the names operators know workers by. */
export function workerNamesById(workers: Worker[]): Map<string, string> {
  return new Map(workers.map((worker) => [worker.id, worker.authority]));
}

/**
 * Turns a `--worker` value into a worker id. The API filters by id, but operators know workers
 * by authority, so a value that is not a uuid is looked up as an authority.
 */
export async function resolveWorkerId(client: CoordinatorClient, value: string): Promise<string> {
  if (UUID_PATTERN.test(value)) return value.toLowerCase();

  const workers = await fetchWorkers(client);
  const match = workers.find((worker) => worker.authority === value);
  if (match) return match.id;
  throw new CliError(
    `No worker with authority or id "${value}": run "appproxy workers" to list them`,
  );
}
