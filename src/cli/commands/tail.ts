import type { RouteEvent } from '../../../proto/index.ts';
import type { CommandContext } from '../context.ts';
import { EventStream } from '../event-stream.ts';
import { formatEvent } from '../format.ts';
import { fetchWorkers, resolveWorkerId, workerNamesById } from '../workers.ts';

export interface TailOptions {
  /** Revision after which stored events print first; when undefined, only new events print. */
  since?: number;
  session?: string;
  worker?: string;
  json: boolean;
}

/**
 * Prints route and worker events one a line until SIGINT or SIGTERM, reconnecting on its own.
 * Rejects when the stream cannot resume, e.g. when `since` is older than the change log keeps.
 */
export async function runTail(context: CommandContext, options: TailOptions): Promise<void> {
  const { client } = context;
  // Fetching the workers first also checks the URL and the token before streaming starts.
  const workerNames = workerNamesById(await fetchWorkers(client));
  const workerId = options.worker ? await resolveWorkerId(client, options.worker) : undefined;
  // NOTE: with --session or --worker, the stream resumes after the last event that matched, so a
  // long outage after a quiet spell can end with 4410 although no matching event was lost.
  // Starting from the current revision rather than "now" lets a reconnect before the first
  // event resume without a gap.
  const since = options.since ?? (await fetchCurrentRevision(context));
  const stream = new EventStream({
    url: client.webSocketUrl('/events/stream', {
      session_id: options.session,
      worker_id: workerId,
    }),
    headers: client.authHeaders(),
    since,
    onEvent: (event) => printEvent(context, event, workerNames, options.json),
    onNotice: (message) => context.warn(message),
    onOpen: (isReconnect) => {
      if (isReconnect) void refreshWorkerNames(context, workerNames);
    },
  });
  await runUntilSignal(stream);
}

function printEvent(
  context: CommandContext,
  event: RouteEvent,
  workerNames: Map<string, string>,
  isJson: boolean,
): void {
  if (event.worker) workerNames.set(event.worker.id, event.worker.authority);
  if (isJson) {
    context.print(JSON.stringify(event));
    return;
  }
  const workerName = (id: string) => workerNames.get(id) ?? id;
  context.print(formatEvent(event, { palette: context.palette, workerName }));
}

async function fetchCurrentRevision(context: CommandContext): Promise<number | undefined> {
  const health = await context.client.request<{ revision?: number }>('GET', '/health', {
    acceptStatuses: [503],
  });
  const revision = health.body.revision;
  return Number.isInteger(revision) ? revision : undefined;
}

/** Learns workers registered while the stream was down; a failure keeps the old names. */
async function refreshWorkerNames(context: CommandContext, names: Map<string, string>) {
  try {
    for (const [id, authority] of workerNamesById(await fetchWorkers(context.client))) {
      names.set(id, authority);
    }
  } catch {
    // Names are a convenience: events still print, with worker ids.
  }
}

/** Runs the stream until it fails or SIGINT or SIGTERM stops it. */
async function runUntilSignal(stream: EventStream): Promise<void> {
  const stop = () => stream.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    await stream.run();
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
}
