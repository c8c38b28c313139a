import type { RouteEvent } from '../../proto/index.ts';
import { CompactedError } from '../errors.ts';
import { changesAfter, readMeta, toEvent, type ChangeFilter } from '../store/changes.ts';
import type { Sql } from '../store/database.ts';
import type { ChangeRecord } from '../store/writer.ts';

/** Reads the change log as events. */
export class EventService {
  readonly #sql: Sql;

  constructor(sql: Sql) {
    this.#sql = sql;
  }

  /**
   * Returns events after `since` and the current revision.
   *
   * @throws CompactedError when the log no longer contains every event after `since`.
   */
  async list(since: number, limit: number): Promise<{ events: RouteEvent[]; revision: number }> {
    const changes = await this.changesAfter(since, limit);
    const meta = await readMeta(this.#sql);
    return { events: changes.map(toEvent), revision: meta.revision };
  }

  /** Returns stored changes after `since`, checking that compaction removed none of them. */
  async changesAfter(since: number, limit: number, filter?: ChangeFilter): Promise<ChangeRecord[]> {
    const changes = await changesAfter(this.#sql, since, limit, filter);
    // Read the mark after the rows: a compaction that ran in between is caught here.
    const meta = await readMeta(this.#sql);
    if (since < meta.compactedThrough) throw new CompactedError(since, meta.compactedThrough + 1);
    return changes;
  }
}
