import type { Route } from '../../../proto/index.ts';
import type { CoordinatorClient } from '../client.ts';
import type { CommandContext } from '../context.ts';
import { CliError } from '../errors.ts';
import { type Column, renderTable, statusStyle } from '../format.ts';
import { fetchWorkers, resolveWorkerId, workerNamesById } from '../workers.ts';

export interface RoutesOptions {
  session?: string;
  worker?: string;
  service?: string;
  /** Routes per request; the command follows `next_cursor` until the last page. */
  pageSize: number;
  json: boolean;
}

interface RoutePage {
  routes: Route[];
  next_cursor: string | null;
}

const COLUMNS: Column[] = [
  { header: 'ID' },
  { header: 'SESSION' },
  { header: 'SERVICE' },
  { header: 'PROTOCOL' },
  { header: 'WORKER' },
  { header: 'URL' },
  { header: 'STATUS' },
  { header: 'REVISION', alignRight: true },
];

/** Lists routes, filtered like `GET /routes`, as a table or as JSON. */
export async function runRoutes(context: CommandContext, options: RoutesOptions): Promise<void> {
  const { client } = context;
  const workerId = options.worker ? await resolveWorkerId(client, options.worker) : undefined;
  const filters = { session_id: options.session, worker_id: workerId, service: options.service };
  const routes = await listAllRoutes(client, filters, options.pageSize);

  if (options.json) {
    context.print(JSON.stringify({ routes }, null, 2));
    return;
  }
  if (routes.length === 0) {
    context.warn('No routes match.');
    return;
  }
  const names = workerNamesById(await fetchWorkers(client));
  context.print(renderRoutesTable(routes, names, context));
}

/** Fetches every page of `GET /routes` with the given filters. */
export async function listAllRoutes(
  client: CoordinatorClient,
  filters: Record<string, string | undefined>,
  pageSize: number,
): Promise<Route[]> {
  const routes: Route[] = [];
  const seenCursors = new Set<string>();
  let cursor: string | undefined;
  do {
    const page = await client.get<RoutePage>('/routes', { ...filters, limit: pageSize, cursor });
    routes.push(...page.routes);
    cursor = page.next_cursor ?? undefined;
    // A cursor that comes back twice would loop forever; the coordinator never sends one.
    if (cursor !== undefined && seenCursors.has(cursor)) {
      throw new CliError(`GET /routes returned cursor "${cursor}" twice; stopping the listing`);
    }
    if (cursor !== undefined) seenCursors.add(cursor);
  } while (cursor !== undefined);
  return routes;
}

/** Renders routes as a table, naming workers by authority where known. */
export function renderRoutesTable(
  routes: Route[],
  workerNames: Map<string, string>,
  context: Pick<CommandContext, 'palette'>,
): string {
  const { palette } = context;
  const rows = routes.map((route) => [
    route.id,
    route.session_id,
    route.service,
    route.protocol,
    workerNames.get(route.worker_id) ?? route.worker_id,
    route.url,
    { text: route.status, style: statusStyle(route.status, palette) },
    String(route.revision),
  ]);
  return renderTable(COLUMNS, rows, palette);
}
