import type postgres from 'postgres';
import type { Logger } from '../log.ts';
import type { SweepMetrics } from '../metrics.ts';
import type { PresenceService } from '../services/presence.ts';
import type { RouteService } from '../services/routes.ts';
import type { WorkerService } from '../services/workers.ts';
import { compactChanges } from '../store/changes.ts';
import type { Sql } from '../store/database.ts';

// Arbitrary fixed key of the advisory lock held by the one coordinator that sweeps.
const SWEEP_LOCK_KEY = 7_301_002;

export interface SweeperOptions {
  sql: Sql;
  workers: WorkerService;
  /** Deletes idle routes; without it no route expires. */
  routes?: Pick<RouteService, 'expireIdle'>;
  log: Logger;
  heartbeatIntervalMs: number;
  heartbeatMisses: number;
  changeLog: { maxAgeMs: number; maxCount: number };
  compactionIntervalMs: number;
  /** Whether to take the advisory lock; false only where one coordinator can exist. */
  useLock: boolean;
  presence?: PresenceService;
  /** A coordinator not seen for this long has stopped; its sessions are released, in ms. */
  presenceTimeoutMs?: number;
  /** Counts lost workers and moved routes. */
  metrics?: SweepMetrics;
  /**
   * Returns the time (ms since the epoch) before which every heartbeat this
   * coordinator received is in the database; without it, stored times are trusted.
   */
  heartbeatsWrittenAt?: () => number;
}

/**
 * Runs the periodic jobs (lost workers, failover, idle expiry, change-log compaction) on
 * one coordinator at a time, under a session-level advisory lock. A tick never
 * starts while the previous one runs; one that overruns its period is logged.
 */
export class Sweeper {
  readonly #options: SweeperOptions;
  readonly #log: Logger;
  readonly #periodMs: number;
  #lockConnection: postgres.ReservedSql | null = null;
  #timer: NodeJS.Timeout | undefined;
  #isStopped = false;
  /** Liveness counts only from here: after start, or after the database came back. */
  #watchingSince = Date.now();
  #isDatabaseDown = false;
  #areHeartbeatsBehind = false;
  #lastCompactionAt = 0;

  constructor(options: SweeperOptions) {
    this.#options = options;
    this.#log = options.log;
    this.#periodMs = Math.max(50, Math.min(1000, options.heartbeatIntervalMs / 4));
  }

  get isLeader(): boolean {
    return this.#lockConnection !== null;
  }

  start(): void {
    this.#watchingSince = Date.now();
    this.#schedule(0);
  }

  async stop(): Promise<void> {
    this.#isStopped = true;
    clearTimeout(this.#timer);
    await this.#releaseLock();
  }

  #schedule(delayMs: number): void {
    if (this.#isStopped) return;
    this.#timer = setTimeout(() => void this.#tick(), delayMs);
  }

  async #tick(): Promise<void> {
    const startedAt = Date.now();
    try {
      if (await this.#holdLock()) await this.#sweep();
      this.#databaseUp();
    } catch (error) {
      this.#databaseDown(error);
    }
    const elapsedMs = Date.now() - startedAt;
    if (elapsedMs > this.#periodMs) {
      this.#log.warn({ elapsed_ms: elapsedMs, period_ms: this.#periodMs }, 'sweep overran its period; skipped ticks');
    }
    this.#schedule(Math.max(0, this.#periodMs - elapsedMs));
  }

  async #sweep(): Promise<void> {
    this.#checkHeartbeatWrites();
    await this.#detectLost();
    await this.#releaseOrphanedSessions();
    const moved = await this.#options.workers.failOver();
    if (moved.length > 0) this.#log.info({ routes: moved.length }, 'routes failed over');
    for (const route of moved) {
      const fields = { route_id: route.id, worker_id: route.worker_id, revision: route.revision };
      this.#log.debug(fields, 'route moved');
    }
    this.#options.metrics?.routesFailedOver(moved.length);
    await this.#expireIdleRoutes();
    if (Date.now() - this.#lastCompactionAt >= this.#options.compactionIntervalMs) {
      this.#lastCompactionAt = Date.now();
      const deleted = await compactChanges(this.#options.sql, this.#options.changeLog);
      if (deleted > 0) this.#log.info({ changes: deleted }, 'compacted the change log');
    }
  }

  async #expireIdleRoutes(): Promise<void> {
    // Route activity is written in batches too; after a stall it gets the same grace.
    if (!this.#isWatching()) return;
    const expired = (await this.#options.routes?.expireIdle()) ?? [];
    if (expired.length > 0) this.#log.info({ routes: expired.length }, 'deleted idle routes');
  }

  #deadlineMs(): number {
    return this.#options.heartbeatIntervalMs * this.#options.heartbeatMisses;
  }

  /** Returns whether stored heartbeat times cover a whole deadline, so silence means lost. */
  #isWatching(): boolean {
    return Date.now() - this.#watchingSince >= this.#deadlineMs();
  }

  /**
   * Returns the largest heartbeat write lag, in ms, that cannot make a live worker look
   * silent: the worker's last stored beat is at most one interval older than its newest.
   * A quarter interval is kept back for the write period and timer drift.
   */
  #maxHeartbeatLagMs(): number {
    const intervalMs = this.#options.heartbeatIntervalMs;
    const safeMs = (this.#options.heartbeatMisses - 1) * intervalMs - intervalMs / 4;
    return Math.max(intervalMs / 2, safeMs);
  }

  /**
   * Restarts the watch while heartbeat writes lag behind the clock: a stalled
   * database leaves stored heartbeat times old although workers kept sending.
   * NOTE: only this coordinator's writes are checked, so with several coordinators the
   * workers of another one whose heartbeat writes lag can still be declared lost.
   */
  #checkHeartbeatWrites(): void {
    const writtenAt = this.#options.heartbeatsWrittenAt?.() ?? Date.now();
    const lagMs = Date.now() - writtenAt;
    if (lagMs <= this.#maxHeartbeatLagMs()) {
      if (this.#areHeartbeatsBehind) {
        this.#log.info('heartbeat writes caught up; lost-worker checks resume after one deadline');
      }
      this.#areHeartbeatsBehind = false;
      return;
    }
    if (!this.#areHeartbeatsBehind) {
      const message = 'heartbeat writes are behind; no worker is declared lost meanwhile';
      this.#log.warn({ lag_ms: lagMs }, message);
    }
    this.#areHeartbeatsBehind = true;
    this.#watchingSince = Date.now();
  }

  async #detectLost(): Promise<void> {
    const deadlineMs = this.#deadlineMs();
    // Heartbeats could not be recorded before this point, so no worker is judged on that gap.
    if (!this.#isWatching()) return;
    const cutoff = new Date(Date.now() - deadlineMs);
    if ((await this.#options.workers.silentWorkers(cutoff)).length === 0) return;
    // That read may have waited out a stall, so look at the heartbeat writes again.
    this.#checkHeartbeatWrites();
    if (!this.#isWatching()) return;
    const lost = await this.#options.workers.markLost(cutoff);
    this.#options.metrics?.workersLost(lost.length);
    for (const worker of lost) {
      this.#log.warn(
        { worker_id: worker.id, authority: worker.authority, deadline_ms: deadlineMs },
        'worker lost: no heartbeat within the deadline',
      );
    }
  }

  async #releaseOrphanedSessions(): Promise<void> {
    const { presence, presenceTimeoutMs = 10_000 } = this.#options;
    // Right after an outage no coordinator could record presence, so wait one timeout first.
    if (!presence || Date.now() - this.#watchingSince < presenceTimeoutMs) return;
    const released = await presence.releaseOrphanedSessions(new Date(Date.now() - presenceTimeoutMs));
    if (released > 0) {
      this.#log.warn({ sessions: released }, 'released sessions of a coordinator that stopped');
    }
  }

  /** Takes the sweep lock if free; returns whether this coordinator holds it. */
  async #holdLock(): Promise<boolean> {
    if (!this.#options.useLock) return true;
    if (this.#lockConnection) {
      // The lock dies with its connection: check that the connection still works.
      await this.#lockConnection`SELECT 1`;
      return true;
    }
    const connection = await this.#options.sql.reserve();
    const [row] = await connection`SELECT pg_try_advisory_lock(${SWEEP_LOCK_KEY}) AS locked`;
    if (!row.locked) {
      connection.release();
      return false;
    }
    this.#lockConnection = connection;
    this.#watchingSince = Date.now();
    this.#log.info('this coordinator now runs the sweeps');
    return true;
  }

  async #releaseLock(): Promise<void> {
    const connection = this.#lockConnection;
    this.#lockConnection = null;
    if (!connection) return;
    await connection`SELECT pg_advisory_unlock(${SWEEP_LOCK_KEY})`.catch(() => {});
    connection.release();
  }

  #databaseUp(): void {
    if (!this.#isDatabaseDown) return;
    this.#isDatabaseDown = false;
    this.#watchingSince = Date.now();
    this.#log.info('database reachable again; lost-worker checks resume after one deadline');
  }

  #databaseDown(error: unknown): void {
    if (!this.#isDatabaseDown) this.#log.error({ err: error }, 'sweep failed: database unreachable');
    this.#isDatabaseDown = true;
    // The lock died with its connection, if that broke; take it again later.
    const connection = this.#lockConnection;
    this.#lockConnection = null;
    connection?.release();
  }
}
