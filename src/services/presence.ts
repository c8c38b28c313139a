import type { WorkerEventSubject } from '../../proto/index.ts';
import type { Sql } from '../store/database.ts';
import * as store from '../store/coordinators.ts';
import { findWorkerRecord, releaseInstanceSession } from '../store/workers.ts';
import type { Writer } from '../store/writer.ts';

/**
 * Tracks which coordinator processes are running, so the sessions a crashed
 * coordinator held stop counting as connected.
 */
export class PresenceService {
  readonly #sql: Sql;
  readonly #writer: Writer;
  readonly coordinatorId: string;

  constructor(sql: Sql, writer: Writer, coordinatorId: string) {
    this.#sql = sql;
    this.#writer = writer;
    this.coordinatorId = coordinatorId;
  }

  /** Records that this coordinator is running. */
  touch(): Promise<void> {
    return store.touchCoordinator(this.#sql, this.coordinatorId, new Date());
  }

  /** Removes this coordinator's row on a graceful stop. */
  leave(): Promise<void> {
    return store.removeCoordinator(this.#sql, this.coordinatorId);
  }

  /**
   * Closes, in the database, the sessions held by coordinators not seen
   * since `cutoff`, with a `worker.disconnected` event for each.
   *
   * @returns how many sessions were released.
   */
  async releaseOrphanedSessions(cutoff: Date): Promise<number> {
    const orphans = await store.orphanedSessions(this.#sql, cutoff);
    if (orphans.length === 0) return 0;
    const released = await this.#writer.run(async (tx) => {
      let count = 0;
      for (const orphan of await store.orphanedSessions(tx.sql, cutoff)) {
        const [row] = await tx.sql`
          SELECT coordinator_id FROM worker_instances
          WHERE worker_id = ${orphan.workerId} AND instance_id = ${orphan.instanceId}`;
        const isReleased = await releaseInstanceSession(tx.sql, orphan, String(row.coordinator_id));
        if (!isReleased) continue;
        const worker = await findWorkerRecord(tx.sql, orphan.workerId);
        if (!worker) continue;
        const subject: WorkerEventSubject = {
          id: worker.id,
          authority: worker.authority,
          status: worker.status,
          generation: orphan.generation,
          instance_id: orphan.instanceId,
        };
        tx.record({ type: 'worker.disconnected', worker_id: worker.id, worker: subject, reason: 'coordinator_gone' });
        count += 1;
      }
      return count;
    });
    await store.forgetCoordinators(this.#sql, cutoff);
    return released;
  }
}
