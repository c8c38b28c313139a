import type { Worker } from '../../../proto/index.ts';
import type { CommandContext } from '../context.ts';
import { CliError } from '../errors.ts';
import {
  type Cell,
  type Column,
  type Palette,
  formatAge,
  formatDuration,
  renderTable,
  statusStyle,
  truncate,
} from '../format.ts';
import { fetchWorkers } from '../workers.ts';

export interface StatusOptions {
  json: boolean;
}

/** Body of `GET /health`; 503 carries the same shape with `db: "down"`. */
export interface Health {
  status: string;
  db: string;
  epoch?: string;
  revision?: number;
  workers?: { alive: number; lost: number };
}

const COLUMNS: Column[] = [
  { header: 'AUTHORITY' },
  { header: 'STATUS' },
  { header: 'CONNECTED' },
  { header: 'APPLIED', alignRight: true },
  { header: 'TARGET', alignRight: true },
  { header: 'LAG' },
  { header: 'ROUTES', alignRight: true },
  { header: 'HEARTBEAT' },
  { header: 'LAST NACK' },
];

// The table keeps nack errors short; `--json` prints them whole.
const MAX_NACK_ERROR_LENGTH = 60;

/**
 * Prints the health of the coordinator and the sync state of every worker, including the last
 * route a worker rejected. Fails when the coordinator reports its database down.
 */
export async function runStatus(context: CommandContext, options: StatusOptions): Promise<void> {
  const health = await fetchHealth(context);
  const isHealthy = health.status === 'ok';
  const workers = isHealthy ? await fetchWorkers(context.client) : [];

  if (options.json) context.print(JSON.stringify({ health, workers }, null, 2));
  else printStatus(context, health, workers);

  if (!isHealthy) {
    throw new CliError(`The coordinator at ${context.client.baseUrl.origin} is unhealthy`);
  }
}

async function fetchHealth(context: CommandContext): Promise<Health> {
  // /health responds 503 with the same body while the database is down.
  const response = await context.client.request<Health>('GET', '/health', {
    acceptStatuses: [503],
  });
  return response.body;
}

function printStatus(context: CommandContext, health: Health, workers: Worker[]): void {
  context.print(describeHealth(health, context.client.baseUrl, context.palette));
  if (health.status !== 'ok') return;
  if (workers.length === 0) {
    context.print('No workers are registered.');
    return;
  }
  context.print('');
  context.print(renderStatusTable(workers, context));
}

/** Describes the coordinator in one line: `coordinator http://…: ok, database up, …`. */
export function describeHealth(health: Health, baseUrl: URL, palette: Palette): string {
  const state = health.status === 'ok' ? palette.green('ok') : palette.red(health.status);
  const db = health.db === 'up' ? 'database up' : palette.red(`database ${health.db}`);
  const parts = [`coordinator ${baseUrl.origin}: ${state}`, db];
  if (health.revision !== undefined) parts.push(`revision ${health.revision}`);
  if (health.epoch !== undefined) parts.push(`epoch ${health.epoch}`);
  if (health.workers) {
    parts.push(`workers ${health.workers.alive} alive, ${health.workers.lost} lost`);
  }
  return parts.join(', ');
}

/** Renders one row per worker: sync state, lag, heartbeat age and the last nack. */
export function renderStatusTable(
  workers: Worker[],
  context: Pick<CommandContext, 'palette' | 'nowMs'>,
): string {
  const { palette } = context;
  const nowMs = context.nowMs();
  const rows = workers.map((worker) => [
    worker.authority,
    { text: worker.status, style: statusStyle(worker.status, palette) },
    describeConnected(worker, palette),
    String(worker.applied_revision),
    String(worker.target_revision),
    describeLag(worker, palette),
    String(worker.route_count),
    formatAge(worker.last_heartbeat_at, nowMs),
    describeLastNack(worker, nowMs, palette),
  ]);
  return renderTable(COLUMNS, rows, palette);
}

/** `1/2` connected instances, or `yes`/`no` when the worker reports no instances. */
function describeConnected(worker: Worker, palette: Palette): Cell {
  const instances = worker.instances ?? [];
  const style = worker.connected ? undefined : palette.red;
  if (instances.length === 0) return { text: worker.connected ? 'yes' : 'no', style };
  const connected = instances.filter((instance) => instance.connected).length;
  return { text: `${connected}/${instances.length}`, style };
}

function describeLag(worker: Worker, palette: Palette): Cell {
  if (worker.applied_revision >= worker.target_revision) {
    return { text: 'in sync', style: palette.green };
  }
  const text = `${worker.lag_revisions} rev, ${formatDuration(worker.lag_ms)}`;
  return { text, style: palette.yellow };
}

/** `r42 rejected 3s ago: port 21000 is in use`, or `-` when the worker never sent a nack. */
export function describeLastNack(worker: Worker, nowMs: number, palette: Palette): Cell {
  const nack = worker.last_nack;
  if (!nack) return { text: '-' };
  const error = truncate(nack.error.replace(/\s+/g, ' '), MAX_NACK_ERROR_LENGTH);
  const text = `r${nack.revision} ${nack.reason} ${formatAge(nack.at, nowMs)}: ${error}`;
  return { text, style: palette.red };
}
