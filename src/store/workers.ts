import type {
  Nack,
  RegisterWorkerBody,
  Worker,
  WorkerInstance,
  WorkerStatus,
} from '../../proto/index.ts';
import { pipelinedTransaction, type Queryable, type Sql } from './database.ts';

// SQL for workers and their instances.

const SELECT_WORKER = `
  SELECT w.*,
    COALESCE((
      SELECT jsonb_agg(jsonb_build_object(
        'instance_id', i.instance_id,
        'generation', i.generation,
        'connected', i.coordinator_id IS NOT NULL,
        'applied_revision', i.applied_revision,
        'last_heartbeat_at', i.last_heartbeat_at) ORDER BY i.instance_id)
      FROM worker_instances i WHERE i.worker_id = w.id), '[]') AS instances,
    CASE WHEN w.applied_revision >= w.target_revision THEN NULL ELSE (
      SELECT min(c.at) FROM changes c
      WHERE c.revision > w.applied_revision AND c.revision <= w.target_revision
        AND (c.worker_id = w.id OR c.prev_worker_id = w.id)
    ) END AS lag_since
  FROM workers w`;

type Row = Record<string, unknown>;

function isoOrNull(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  return value instanceof Date ? value.toISOString() : new Date(String(value)).toISOString();
}

/** A worker row without its derived fields, as write jobs use it. */
export interface WorkerRecord {
  id: string;
  authority: string;
  frontend_mode: 'port' | 'wildcard';
  hostname: string;
  protocols: Array<'http' | 'tcp'>;
  port_range: [number, number] | null;
  wildcard_domain: string | null;
  advertised_port: number | null;
  capacity: number | null;
  labels: Record<string, string>;
  status: WorkerStatus;
  generation: number;
}

function rowToRecord(row: Row): WorkerRecord {
  const hasRange = row.port_first !== null && row.port_first !== undefined;
  return {
    id: String(row.id),
    authority: String(row.authority),
    frontend_mode: row.frontend_mode as WorkerRecord['frontend_mode'],
    hostname: String(row.hostname),
    protocols: row.protocols as WorkerRecord['protocols'],
    port_range: hasRange ? [Number(row.port_first), Number(row.port_last)] : null,
    wildcard_domain: (row.wildcard_domain as string | null) ?? null,
    advertised_port: row.advertised_port === null ? null : Number(row.advertised_port),
    capacity: row.capacity === null ? null : Number(row.capacity),
    labels: row.labels as Record<string, string>,
    status: row.status as WorkerStatus,
    generation: Number(row.generation),
  };
}

function rowToWorker(row: Row): Worker {
  const instances = (row.instances as WorkerInstance[]).map((instance) => ({
    ...instance,
    generation: Number(instance.generation),
    applied_revision: Number(instance.applied_revision),
    last_heartbeat_at: isoOrNull(instance.last_heartbeat_at),
  }));
  const target = Number(row.target_revision);
  const applied = Number(row.applied_revision);
  const lagSince = row.lag_since ? new Date(String(row.lag_since)).getTime() : null;
  return {
    ...rowToRecord(row),
    connected: instances.some((instance) => instance.connected),
    registered_at: isoOrNull(row.registered_at) ?? '',
    last_heartbeat_at: isoOrNull(row.last_heartbeat_at),
    route_count: Number(row.route_count),
    target_revision: target,
    applied_revision: applied,
    lag_revisions: Math.max(0, target - applied),
    lag_ms: lagSince === null ? 0 : Math.max(0, Date.now() - lagSince),
    last_ack_at: isoOrNull(row.last_ack_at),
    last_nack: (row.last_nack as Nack | null) ?? null,
    instances,
  };
}

export async function findWorker(q: Queryable, id: string): Promise<Worker | null> {
  const rows = await q.unsafe(`${SELECT_WORKER} WHERE w.id = $1`, [id], { prepare: true });
  return rows.length > 0 ? rowToWorker(rows[0]) : null;
}

export async function listWorkers(q: Queryable): Promise<Worker[]> {
  const rows = await q.unsafe(`${SELECT_WORKER} ORDER BY w.authority`);
  return rows.map(rowToWorker);
}

export async function findWorkerRecord(q: Queryable, id: string): Promise<WorkerRecord | null> {
  const rows = await q`SELECT * FROM workers WHERE id = ${id}`;
  return rows.length > 0 ? rowToRecord(rows[0]) : null;
}

export async function findWorkerByAuthority(
  q: Queryable,
  authority: string,
): Promise<WorkerRecord | null> {
  const rows = await q`SELECT * FROM workers WHERE authority = ${authority}`;
  return rows.length > 0 ? rowToRecord(rows[0]) : null;
}

/** Returns the authority holding a wildcard domain, other than `authority`. */
export async function wildcardDomainOwner(
  q: Queryable,
  domain: string,
  authority: string,
): Promise<string | null> {
  const rows = await q`
    SELECT authority FROM workers WHERE wildcard_domain = ${domain} AND authority <> ${authority}`;
  return rows.length > 0 ? String(rows[0].authority) : null;
}

export interface WorkerRegistration {
  id: string;
  body: RegisterWorkerBody;
  generation: number;
  status: WorkerStatus;
  at: Date;
}

/**
 * Inserts a worker or replaces its registration, keeping its id and sync state.
 * It locks the worker's instance rows before the worker row, the order that ack
 * and heartbeat writes use, to avoid lock cycles with them.
 */
export async function upsertWorker(q: Queryable, registration: WorkerRegistration): Promise<void> {
  const { id, body, generation, status, at } = registration;
  await q`SELECT 1 FROM worker_instances WHERE worker_id = ${id} ORDER BY instance_id FOR UPDATE`;
  await q`
    INSERT INTO workers (id, authority, frontend_mode, hostname, protocols, port_first, port_last,
      wildcard_domain, advertised_port, capacity, labels, status, generation, registered_at,
      last_heartbeat_at)
    VALUES (${id}, ${body.authority}, ${body.frontend_mode}, ${body.hostname},
      ${body.protocols}::text[], ${body.port_range?.[0] ?? null}, ${body.port_range?.[1] ?? null},
      ${body.wildcard_domain ?? null}, ${body.advertised_port ?? null}, ${body.capacity ?? null},
      ${JSON.stringify(body.labels)}::text::jsonb, ${status}, ${generation}, ${at}, ${at})
    ON CONFLICT (id) DO UPDATE SET
      frontend_mode = EXCLUDED.frontend_mode, hostname = EXCLUDED.hostname,
      protocols = EXCLUDED.protocols, port_first = EXCLUDED.port_first,
      port_last = EXCLUDED.port_last, wildcard_domain = EXCLUDED.wildcard_domain,
      advertised_port = EXCLUDED.advertised_port, capacity = EXCLUDED.capacity,
      labels = EXCLUDED.labels, status = EXCLUDED.status, generation = EXCLUDED.generation,
      registered_at = EXCLUDED.registered_at, last_heartbeat_at = EXCLUDED.last_heartbeat_at`;
}

/**
 * Stores an instance's registration; its previous session token stops working.
 * A registration again is a new process: the old one's session and acks stop
 * counting here, because the fenced close of that session cannot clear them.
 */
export async function upsertInstance(
  q: Queryable,
  instance: { workerId: string; instanceId: string; generation: number; tokenHash: string; at: Date },
): Promise<void> {
  await q`
    INSERT INTO worker_instances (worker_id, instance_id, generation, session_token_hash, registered_at)
    VALUES (${instance.workerId}, ${instance.instanceId}, ${instance.generation},
      ${instance.tokenHash}, ${instance.at})
    ON CONFLICT (worker_id, instance_id) DO UPDATE SET
      generation = EXCLUDED.generation, session_token_hash = EXCLUDED.session_token_hash,
      coordinator_id = NULL, applied_revision = 0, registered_at = EXCLUDED.registered_at`;
  await refreshAppliedRevision(q, instance.workerId);
}

/**
 * Deletes a worker's instances that have no session and have neither
 * registered nor sent a heartbeat since `before`: processes that stopped,
 * such as earlier runs of a worker that picks a new instance id each start.
 *
 * @returns how many were deleted.
 */
export async function deleteStaleInstances(q: Queryable, workerId: string, before: Date): Promise<number> {
  const rows = await q`
    DELETE FROM worker_instances
    WHERE worker_id = ${workerId} AND coordinator_id IS NULL
      AND GREATEST(registered_at, last_heartbeat_at) < ${before}
    RETURNING instance_id`;
  if (rows.length > 0) await refreshAppliedRevision(q, workerId);
  return rows.length;
}

export async function setWorkerStatus(
  q: Queryable,
  id: string,
  status: WorkerStatus,
): Promise<void> {
  await q`UPDATE workers SET status = ${status} WHERE id = ${id}`;
}

/** The registration a session token belongs to. */
export interface InstanceIdentity {
  workerId: string;
  instanceId: string;
  generation: number;
  workerStatus: WorkerStatus;
  authority: string;
}

export async function findInstanceByTokenHash(
  q: Queryable,
  tokenHash: string,
): Promise<InstanceIdentity | null> {
  const rows = await q`
    SELECT i.worker_id, i.instance_id, i.generation, w.status, w.authority
    FROM worker_instances i JOIN workers w ON w.id = i.worker_id
    WHERE i.session_token_hash = ${tokenHash}`;
  if (rows.length === 0) return null;
  return {
    workerId: String(rows[0].worker_id),
    instanceId: String(rows[0].instance_id),
    generation: Number(rows[0].generation),
    workerStatus: rows[0].status as WorkerStatus,
    authority: String(rows[0].authority),
  };
}

/**
 * Recomputes a worker's applied revision: the lowest of its connected
 * instances, or the highest of any when none is connected.
 */
async function refreshAppliedRevision(q: Queryable, workerId: string): Promise<void> {
  await q`
    UPDATE workers SET applied_revision = COALESCE((
      SELECT COALESCE(min(applied_revision) FILTER (WHERE coordinator_id IS NOT NULL),
                      max(applied_revision))
      FROM worker_instances WHERE worker_id = ${workerId}), 0)
    WHERE id = ${workerId}`;
}

export interface InstanceKey {
  workerId: string;
  instanceId: string;
  generation: number;
}

/** One instance's acknowledged revision, as `recordAcks` writes it. */
export interface AckRecord extends InstanceKey {
  revision: number;
  /** Whether the ack clears the worker's last nack (when that nack is not newer). */
  clearsNack: boolean;
}

/**
 * Records the acks of many instances, at most one per instance, in one
 * transaction: each instance's applied revision, and per worker its last ack
 * time, its applied revision (the lowest of its connected instances, or the
 * highest of any when none is connected) and its last nack. The generation
 * fences out superseded sessions. Rows that another transaction has locked,
 * such as a write transaction updating the worker, are skipped rather than
 * waited for, so acks never join a deadlock.
 *
 * @returns the acks skipped that way, to record again later.
 */
export async function recordAcks(sql: Sql, acks: AckRecord[], at: Date): Promise<AckRecord[]> {
  if (acks.length === 0) return [];
  return pipelinedTransaction(sql, async (tx) => {
    const locked = await lockAckRows(tx, acks);
    const isLocked = (ack: AckRecord) => locked.has(`${ack.workerId}/${ack.instanceId}`);
    const written = acks.filter(isLocked);
    return {
      value: acks.filter((ack) => !isLocked(ack)),
      inFlight: written.length > 0 ? [writeAcks(tx, ackJson(written), at)] : [],
    };
  });
}

function ackJson(acks: AckRecord[]): string {
  return JSON.stringify(
    acks.map((ack) => ({
      worker_id: ack.workerId,
      instance_id: ack.instanceId,
      generation: ack.generation,
      revision: ack.revision,
      clears_nack: ack.clearsNack,
    })),
  );
}

/**
 * Locks the instance rows of the acks and their workers' rows, skipping rows
 * locked elsewhere, so taking the locks never waits for another transaction.
 * Returns `worker/instance` of each ack whose two rows are now both locked.
 */
async function lockAckRows(tx: Queryable, acks: AckRecord[]): Promise<Set<string>> {
  const rows = await tx`
    WITH instance AS (
      SELECT wi.worker_id, wi.instance_id FROM worker_instances wi
      JOIN jsonb_to_recordset(${ackJson(acks)}::text::jsonb) AS t (worker_id uuid, instance_id text)
        ON wi.worker_id = t.worker_id AND wi.instance_id = t.instance_id
      ORDER BY wi.worker_id, wi.instance_id
      FOR UPDATE OF wi SKIP LOCKED
    ),
    worker AS (
      SELECT id FROM workers WHERE id IN (SELECT worker_id FROM instance)
      ORDER BY id
      FOR UPDATE SKIP LOCKED
    )
    SELECT instance.worker_id, instance.instance_id FROM instance
    WHERE instance.worker_id IN (SELECT id FROM worker)`;
  return new Set(rows.map((row) => `${row.worker_id}/${row.instance_id}`));
}

/** Writes locked acks; the statement reads the instance rows as they were before it. */
function writeAcks(q: Queryable, json: string, at: Date): Promise<unknown> {
  return q`
    WITH ack AS (
      SELECT * FROM jsonb_to_recordset(${json}::text::jsonb) AS t (
        worker_id uuid, instance_id text, generation bigint, revision bigint, clears_nack boolean)
    ),
    instance AS (
      UPDATE worker_instances wi SET applied_revision = ack.revision
      FROM ack
      WHERE wi.worker_id = ack.worker_id AND wi.instance_id = ack.instance_id
        AND wi.generation = ack.generation
      RETURNING wi.worker_id, wi.instance_id, ack.revision, ack.clears_nack
    ),
    applied AS (
      SELECT i.worker_id, COALESCE(
          min(COALESCE(instance.revision, i.applied_revision)) FILTER (WHERE i.coordinator_id IS NOT NULL),
          max(COALESCE(instance.revision, i.applied_revision))) AS revision
      FROM worker_instances i
      LEFT JOIN instance ON instance.worker_id = i.worker_id AND instance.instance_id = i.instance_id
      WHERE i.worker_id IN (SELECT worker_id FROM instance)
      GROUP BY i.worker_id
    ),
    acked AS (
      SELECT worker_id, max(revision) AS revision, bool_and(clears_nack) AS clears_nack
      FROM instance GROUP BY worker_id
    )
    UPDATE workers w SET
      last_ack_at = ${at},
      applied_revision = applied.revision,
      last_nack = CASE
        WHEN acked.clears_nack AND (w.last_nack->>'revision')::bigint <= acked.revision THEN NULL
        ELSE w.last_nack END
    FROM applied JOIN acked USING (worker_id)
    WHERE w.id = applied.worker_id`.execute();
}

/**
 * Records an instance's acknowledged revision. The generation fences out a
 * superseded session: its late acks change nothing.
 */
export async function recordAck(
  q: Queryable,
  key: InstanceKey,
  revision: number,
  at: Date,
  clearsNack = true,
): Promise<boolean> {
  const rows = await q`
    UPDATE worker_instances SET applied_revision = ${revision}
    WHERE worker_id = ${key.workerId} AND instance_id = ${key.instanceId}
      AND generation = ${key.generation}
    RETURNING 1`;
  if (rows.length === 0) return false;
  // An ack clears the last nack unless the session still retries the rejected route.
  await q`UPDATE workers SET last_ack_at = ${at}, last_nack = CASE
      WHEN ${clearsNack} AND (last_nack->>'revision')::bigint <= ${revision} THEN NULL
      ELSE last_nack END
    WHERE id = ${key.workerId}`;
  await refreshAppliedRevision(q, key.workerId);
  return true;
}

export async function recordNack(q: Queryable, key: InstanceKey, nack: Nack): Promise<void> {
  await q`
    UPDATE workers SET last_nack = ${JSON.stringify(nack)}::text::jsonb
    WHERE id = ${key.workerId} AND EXISTS (
      SELECT 1 FROM worker_instances WHERE worker_id = ${key.workerId}
        AND instance_id = ${key.instanceId} AND generation = ${key.generation})`;
}

/**
 * Marks an instance's session as held by a coordinator (or by none) and sets
 * the revision it starts from.
 */
export async function setInstanceSession(
  q: Queryable,
  key: InstanceKey,
  session: { coordinatorId: string | null; appliedRevision?: number; at: Date },
): Promise<boolean> {
  const rows = await q`
    UPDATE worker_instances SET
      coordinator_id = ${session.coordinatorId},
      applied_revision = COALESCE(${session.appliedRevision ?? null}::bigint, applied_revision),
      last_heartbeat_at = ${session.at}
    WHERE worker_id = ${key.workerId} AND instance_id = ${key.instanceId}
      AND generation = ${key.generation}
    RETURNING 1`;
  if (rows.length === 0) return false;
  await q`UPDATE workers SET last_heartbeat_at = GREATEST(last_heartbeat_at, ${session.at})
          WHERE id = ${key.workerId}`;
  await refreshAppliedRevision(q, key.workerId);
  return true;
}

/**
 * Marks an instance's session closed, but only while `holderId` still owns
 * it: a session that moved to another coordinator meanwhile stays open.
 *
 * @returns false when another coordinator or registration owns the instance.
 */
export async function releaseInstanceSession(
  q: Queryable,
  key: InstanceKey,
  holderId: string,
): Promise<boolean> {
  const rows = await q`
    UPDATE worker_instances SET coordinator_id = NULL
    WHERE worker_id = ${key.workerId} AND instance_id = ${key.instanceId}
      AND generation = ${key.generation} AND coordinator_id = ${holderId}
    RETURNING 1`;
  if (rows.length === 0) return false;
  await refreshAppliedRevision(q, key.workerId);
  return true;
}

/** Writes heartbeat times of many instances in one statement; fenced by generation. */
export async function writeHeartbeats(
  q: Queryable,
  beats: Array<InstanceKey & { at: Date }>,
): Promise<void> {
  if (beats.length === 0) return;
  const json = JSON.stringify(
    beats.map((b) => ({ w: b.workerId, i: b.instanceId, g: b.generation, at: b.at })),
  );
  await q`
    WITH beat AS (
      SELECT * FROM jsonb_to_recordset(${json}::text::jsonb) AS t (w uuid, i text, g bigint, at timestamptz)
    ),
    instance AS (
      UPDATE worker_instances wi SET last_heartbeat_at = GREATEST(wi.last_heartbeat_at, beat.at)
      FROM beat WHERE wi.worker_id = beat.w AND wi.instance_id = beat.i AND wi.generation = beat.g
      RETURNING wi.worker_id, beat.at
    )
    UPDATE workers w SET last_heartbeat_at = GREATEST(w.last_heartbeat_at, latest.at)
    FROM (SELECT worker_id, max(at) AS at FROM instance GROUP BY worker_id) latest
    WHERE w.id = latest.worker_id`;
}

/** Returns ids of alive or draining workers with no sign of life since `cutoff`. */
export async function silentWorkers(q: Queryable, cutoff: Date): Promise<string[]> {
  const rows = await q`
    SELECT id FROM workers
    WHERE status IN ('alive', 'draining')
      AND GREATEST(last_heartbeat_at, registered_at) < ${cutoff}`;
  return rows.map((row) => String(row.id));
}

/** A live worker that may take routes, with its load. */
export interface Candidate extends WorkerRecord {
  routeCount: number;
  /** Whether some instance has a session open on any coordinator. */
  isConnected: boolean;
  /** Ports of its range that no route uses; null in wildcard mode. */
  freePorts: number | null;
}

/** Returns every alive worker with its load and whether it is connected. */
export async function placementCandidates(q: Queryable): Promise<Candidate[]> {
  const rows = await q`
    SELECT w.*,
      CASE
        WHEN w.port_first IS NULL THEN NULL
        -- Routes outside the range (left by a registration with another range) make the
        -- maintained count overstate what is used, so only an apparently full worker is counted.
        WHEN w.port_last - w.port_first + 1 > w.route_count
          THEN w.port_last - w.port_first + 1 - w.route_count
        ELSE (w.port_last - w.port_first + 1) - (SELECT count(*) FROM routes r
          WHERE r.worker_id = w.id AND r.port BETWEEN w.port_first AND w.port_last)
      END AS free_ports,
      EXISTS (SELECT 1 FROM worker_instances i
        WHERE i.worker_id = w.id AND i.coordinator_id IS NOT NULL) AS is_connected
    FROM workers w
    WHERE w.status = 'alive'
    ORDER BY route_count, w.authority`;
  return rows.map((row) => ({
    ...rowToRecord(row),
    routeCount: Number(row.route_count),
    isConnected: Boolean(row.is_connected),
    freePorts: row.free_ports === null ? null : Number(row.free_ports),
  }));
}

export async function workerCounts(q: Queryable): Promise<{ alive: number; lost: number }> {
  const rows = await q`
    SELECT count(*) FILTER (WHERE status IN ('alive', 'draining')) AS alive,
           count(*) FILTER (WHERE status = 'lost') AS lost
    FROM workers`;
  return { alive: Number(rows[0].alive), lost: Number(rows[0].lost) };
}
