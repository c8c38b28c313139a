import diagnostics from 'node:diagnostics_channel';
import type { Logger } from '../log.ts';
import type { Sql } from '../store/database.ts';

/** The driver publishes connection events of every pool in the process on this channel. */
const POOL_CHANNEL = 'postgres:pool';

/** The part of a `postgres:pool` event this module reads. */
interface PoolEvent {
  event: string;
  connection: number | null;
  host: string | null;
  port: number | null;
  database: string | null;
  error?: { code?: string; cause?: unknown };
}

/**
 * Logs when the database drops a connection of this pool and when the pool
 * connects again: one warning per outage and one line when it ends, however
 * many connections break. Closes the pool asked for itself (idle timeout,
 * shutdown) are `CONNECTION_DESTROYED` and are not logged.
 *
 * @returns a function that stops watching.
 */
export function watchDatabaseConnections(sql: Sql, log: Logger): () => void {
  let lostAt: number | null = null;
  const listener = (message: unknown) => {
    const event = message as PoolEvent;
    if (!isOwnPool(sql, event)) return;
    if (event.event === 'close' && event.error?.code === 'CONNECTION_CLOSED' && lostAt === null) {
      lostAt = Date.now();
      const err = event.error.cause ?? event.error;
      const fields = { err, host: event.host, port: event.port };
      log.warn(fields, 'database closed a connection; reconnecting');
      return;
    }
    if (event.event === 'open' && lostAt !== null) {
      log.info({ down_ms: Date.now() - lostAt }, 'database connection open again');
      lostAt = null;
    }
  };
  diagnostics.subscribe(POOL_CHANNEL, listener);
  return () => diagnostics.unsubscribe(POOL_CHANNEL, listener);
}

/** Events carry no pool id: this pool's events are those of its database, host and port. */
function isOwnPool(sql: Sql, event: PoolEvent): boolean {
  const options = sql.options;
  if (event.database !== options.database) return false;
  const hostIndex = options.host.indexOf(event.host ?? '');
  return hostIndex >= 0 && (options.port[hostIndex] ?? options.port[0]) === event.port;
}
