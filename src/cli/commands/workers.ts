import type { Worker } from '../../../proto/index.ts';
import type { CommandContext } from '../context.ts';
import { type Column, renderTable, statusStyle } from '../format.ts';
import { fetchWorkers } from '../workers.ts';

export interface WorkersOptions {
  json: boolean;
}

const COLUMNS: Column[] = [
  { header: 'AUTHORITY' },
  { header: 'ID' },
  { header: 'MODE' },
  { header: 'STATUS' },
  { header: 'CONNECTED' },
  { header: 'ROUTES', alignRight: true },
  { header: 'APPLIED', alignRight: true },
  { header: 'TARGET', alignRight: true },
];

/** Lists registered workers as a table or as JSON. */
export async function runWorkers(context: CommandContext, options: WorkersOptions): Promise<void> {
  const workers = await fetchWorkers(context.client);
  if (options.json) {
    context.print(JSON.stringify({ workers }, null, 2));
    return;
  }
  if (workers.length === 0) {
    context.warn('No workers are registered.');
    return;
  }
  context.print(renderWorkersTable(workers, context));
}

/** Renders workers as a table with their mode, status and sync state. */
export function renderWorkersTable(
  workers: Worker[],
  context: Pick<CommandContext, 'palette'>,
): string {
  const { palette } = context;
  const rows = workers.map((worker) => [
    worker.authority,
    worker.id,
    describeFrontend(worker),
    { text: worker.status, style: statusStyle(worker.status, palette) },
    worker.connected ? 'yes' : { text: 'no', style: palette.red },
    String(worker.route_count),
    String(worker.applied_revision),
    String(worker.target_revision),
  ]);
  return renderTable(COLUMNS, rows, palette);
}

/** Describes how users reach a worker: `port 21000-21099` or `wildcard .apps.example.test`. */
export function describeFrontend(worker: Worker): string {
  if (worker.frontend_mode === 'port' && worker.port_range) {
    return `port ${worker.port_range[0]}-${worker.port_range[1]}`;
  }
  if (worker.frontend_mode === 'wildcard' && worker.wildcard_domain) {
    return `wildcard ${worker.wildcard_domain}`;
  }
  return worker.frontend_mode;
}
