import type { Logger } from '../log.ts';
import { changesAfter, readMeta } from '../store/changes.ts';
import type { Sql } from '../store/database.ts';
import type { ChangeRecord } from '../store/writer.ts';

export type ChangeListener = (changes: ChangeRecord[]) => void;

export interface ChangeFeedOptions {
  /** Safety poll that covers a lost notification, in ms. */
  pollIntervalMs: number;
  /** Whether the database delivers LISTEN notifications. */
  supportsListen: boolean;
}

const FETCH_LIMIT = 1000;

/**
 * Delivers every committed change to listeners once, in revision order with
 * no gaps, unless this coordinator fell behind a compaction (logged as an
 * error). Local commits come from the writer, and other coordinators' commits
 * through LISTEN/NOTIFY and the safety poll.
 */
export class ChangeFeed {
  readonly #sql: Sql;
  readonly #log: Logger;
  readonly #options: ChangeFeedOptions;
  readonly #listeners = new Set<ChangeListener>();
  #revision = 0;
  /** The last revision of a local commit under way, whose notification needs no read. */
  #committing = 0;
  #isFetching = false;
  #isFetchRequested = false;
  #timer: NodeJS.Timeout | undefined;
  #unlisten: (() => Promise<void>) | undefined;

  constructor(sql: Sql, log: Logger, options: ChangeFeedOptions) {
    this.#sql = sql;
    this.#log = log;
    this.#options = options;
  }

  /** The last revision delivered; every change up to it has reached the listeners. */
  get revision(): number {
    return this.#revision;
  }

  async start(): Promise<void> {
    this.#revision = (await readMeta(this.#sql)).revision;
    if (this.#options.supportsListen) {
      // The payload is the last revision of the commit. This process's own commits
      // are published by the writer, so their notifications need no read.
      const listener = await this.#sql.listen('appproxy_changes', (payload) => {
        const revision = Number(payload);
        if (!(revision <= this.#revision || revision === this.#committing)) this.wake();
      });
      this.#unlisten = listener.unlisten;
    }
    this.#timer = setInterval(() => this.wake(), this.#options.pollIntervalMs);
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#unlisten?.().catch(() => {});
  }

  subscribe(listener: ChangeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Notes a local commit under way, ending at `revision`. Revisions are taken
   * under a lock, so no other commit can end at the same one while it runs.
   */
  expect(revision: number): void {
    this.#committing = revision;
  }

  /** Forgets a local commit that failed, and reads what may have committed anyway. */
  expectFailed(): void {
    this.#committing = 0;
    this.wake();
  }

  /** Takes changes this process committed; ones that do not follow on are read from the log. */
  publish(changes: ChangeRecord[]): void {
    if (changes[0].revision === this.#revision + 1) this.#deliver(changes);
    else if (changes[changes.length - 1].revision > this.#revision) this.wake();
  }

  /** Reads changes committed since the last delivered revision. */
  wake(): void {
    if (this.#isFetching) {
      this.#isFetchRequested = true;
      return;
    }
    this.#isFetching = true;
    this.#fetch()
      .catch((error) => this.#log.warn({ err: error }, 'reading the change log failed; will retry'))
      .finally(() => {
        this.#isFetching = false;
        if (this.#isFetchRequested) {
          this.#isFetchRequested = false;
          this.wake();
        }
      });
  }

  async #fetch(): Promise<void> {
    for (;;) {
      const changes = await changesAfter(this.#sql, this.#revision, FETCH_LIMIT);
      // publish() may have delivered some of these while the query ran.
      const fresh = changes.filter((change) => change.revision > this.#revision);
      if (fresh.length > 0 && fresh[0].revision !== this.#revision + 1) {
        return this.#skipCompacted(fresh[0]);
      }
      if (fresh.length > 0) this.#deliver(contiguousPrefix(fresh));
      if (changes.length < FETCH_LIMIT) return;
    }
  }

  #skipCompacted(first: ChangeRecord): void {
    // Only compaction removes rows, and only after this process fell far behind.
    this.#log.error(
      { revision: this.#revision, next_revision: first.revision },
      'change log was compacted past this coordinator; continuing after the gap',
    );
    this.#revision = first.revision - 1;
    this.wake();
  }

  #deliver(changes: ChangeRecord[]): void {
    const fresh = changes.filter((change) => change.revision > this.#revision);
    if (fresh.length === 0) return;
    this.#revision = fresh[fresh.length - 1].revision;
    for (const listener of this.#listeners) {
      try {
        listener(fresh);
      } catch (error) {
        this.#log.error({ err: error }, 'a change listener failed');
      }
    }
  }
}

function contiguousPrefix(changes: ChangeRecord[]): ChangeRecord[] {
  let end = 1;
  while (end < changes.length && changes[end].revision === changes[end - 1].revision + 1) end++;
  return changes.slice(0, end);
}
