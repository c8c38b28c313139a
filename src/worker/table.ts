import { EventEmitter } from 'node:events';
import type * as v from 'valibot';
import { TableDigest, type WireRouteSchema } from '../../proto/index.ts';

/** A route as the worker receives it over the session, after validation. */
export type WireRoute = v.InferOutput<typeof WireRouteSchema>;

/** A `snapshot` message, or one chunk of a snapshot sent in several messages. */
export interface SnapshotChunk {
  epoch: string;
  revision: number;
  routes: WireRoute[];
  digest: string;
  more?: boolean;
}

/** A `diff` message: valid only on a table at `from_revision`. */
export interface TableDiff {
  epoch: string;
  from_revision: number;
  revision: number;
  upserts: WireRoute[];
  removes: string[];
  digest: string;
}

/**
 * Outcome of applying a snapshot chunk or a diff.
 *
 * - `applied`: the table is now at `revision` with `digest`; ack it.
 * - `partial`: a snapshot chunk with `more: true` was stored aside; nothing to ack yet.
 * - `mismatch`: the message could not be applied, and `dropped` is whether the table was
 *   emptied. Either way the worker needs a snapshot.
 */
export type ApplyResult =
  | { status: 'applied'; revision: number; digest: string; routeCount: number }
  | { status: 'partial'; revision: number; chunkCount: number }
  | { status: 'mismatch'; revision: number; error: string; dropped: boolean };

/** Reason a table was emptied without a snapshot replacing it. */
export type DropReason = 'digest_mismatch' | 'epoch_changed' | 'requested';

export interface RouteTableEvents {
  /** The served routes changed: a snapshot was swapped in, a diff applied or the table dropped. */
  change: [];
  dropped: [reason: DropReason];
}

/** Routes being collected from snapshot chunks before the swap. */
interface PendingSnapshot {
  epoch: string;
  revision: number;
  routes: Map<string, WireRoute>;
  chunkCount: number;
}

/**
 * The worker's route table, indexed by id, port and subdomain.
 *
 * Invariant: `revision` and `epoch` are null exactly when the table contains no snapshot, and
 * `digest` always equals the digest of the routes in `byId`. Readers only ever see a whole
 * table: snapshot chunks are collected aside and swapped in when the last one arrives.
 */
export class RouteTable extends EventEmitter<RouteTableEvents> {
  #epoch: string | null = null;
  #revision: number | null = null;
  #digest = new TableDigest();
  #byId = new Map<string, WireRoute>();
  #byPort = new Map<number, WireRoute>();
  #bySubdomain = new Map<string, WireRoute>();
  #pending: PendingSnapshot | null = null;

  get epoch(): string | null {
    return this.#epoch;
  }

  get revision(): number | null {
    return this.#revision;
  }

  get digest(): string {
    return this.#digest.toHex();
  }

  get size(): number {
    return this.#byId.size;
  }

  /** Whether the table contains a snapshot, so a new session may request to resume from it. */
  get hasSnapshot(): boolean {
    return this.#revision !== null;
  }

  routeById(id: string): WireRoute | undefined {
    return this.#byId.get(id);
  }

  routeForPort(port: number): WireRoute | undefined {
    return this.#byPort.get(port);
  }

  /** Finds the route served under one DNS label, compared case-insensitively. */
  routeForSubdomain(label: string): WireRoute | undefined {
    return this.#bySubdomain.get(label.toLowerCase());
  }

  routes(): IterableIterator<WireRoute> {
    return this.#byId.values();
  }

  /** Ports that have a route, with the route on each. */
  portRoutes(): ReadonlyMap<number, WireRoute> {
    return this.#byPort;
  }

  /**
   * Applies one snapshot message. Chunks of one epoch and revision are collected until the
   * one without `more`. A chunk of another revision starts the collection over, because the
   * coordinator began a new snapshot.
   */
  applySnapshot(chunk: SnapshotChunk): ApplyResult {
    if (this.#epoch !== null && chunk.epoch !== this.#epoch) this.drop('epoch_changed');

    const pending = this.#collect(chunk);
    if (chunk.more === true) {
      return { status: 'partial', revision: chunk.revision, chunkCount: pending.chunkCount };
    }
    this.#pending = null;

    const digest = new TableDigest();
    for (const route of pending.routes.values()) digest.toggle(route.id, route.revision);
    if (digest.toHex() !== chunk.digest) {
      const error = describeDigestMismatch('snapshot', chunk, digest.toHex());
      return this.#rejectAndDrop(chunk.revision, error);
    }

    this.#replace(pending, digest);
    this.emit('change');
    return this.#applied();
  }

  /**
   * Applies one diff. A diff of another epoch drops the table. A diff that does not start at
   * this table's revision leaves the table as it is, because the table is still a consistent
   * state of an earlier revision, and the caller asks for a snapshot.
   */
  applyDiff(diff: TableDiff): ApplyResult {
    this.#pending = null;
    if (this.#epoch === null || this.#revision === null) {
      const error = `Received a diff to revision ${diff.revision} before any snapshot`;
      return { status: 'mismatch', revision: diff.revision, error, dropped: false };
    }
    if (diff.epoch !== this.#epoch) {
      const error = `Received a diff of epoch ${diff.epoch}, but the table is of ${this.#epoch}`;
      this.drop('epoch_changed');
      return { status: 'mismatch', revision: diff.revision, error, dropped: true };
    }
    if (diff.from_revision !== this.#revision) {
      const error =
        `Received a diff from revision ${diff.from_revision}, ` +
        `but the table is at revision ${this.#revision}`;
      return { status: 'mismatch', revision: diff.revision, error, dropped: false };
    }

    for (const id of diff.removes) this.#remove(id);
    for (const route of diff.upserts) this.#upsert(route);
    this.#revision = diff.revision;
    if (this.digest !== diff.digest) {
      return this.#rejectAndDrop(diff.revision, describeDigestMismatch('diff', diff, this.digest));
    }

    this.emit('change');
    return this.#applied();
  }

  /** Empties the table and clears its epoch and revision, so only a snapshot fills it again. */
  drop(reason: DropReason): void {
    const hadContent = this.#revision !== null || this.#byId.size > 0;
    this.#epoch = null;
    this.#revision = null;
    this.#digest = new TableDigest();
    this.#byId.clear();
    this.#byPort.clear();
    this.#bySubdomain.clear();
    this.#pending = null;
    if (!hadContent) return;

    this.emit('dropped', reason);
    this.emit('change');
  }

  /** Discards snapshot chunks collected so far, since a new session sends its own snapshot. */
  discardPendingSnapshot(): void {
    this.#pending = null;
  }

  #collect(chunk: SnapshotChunk): PendingSnapshot {
    const current = this.#pending;
    const isSameSnapshot =
      current !== null && current.epoch === chunk.epoch && current.revision === chunk.revision;
    const pending: PendingSnapshot = isSameSnapshot
      ? current
      : { epoch: chunk.epoch, revision: chunk.revision, routes: new Map(), chunkCount: 0 };

    for (const route of chunk.routes) pending.routes.set(route.id, route);
    pending.chunkCount += 1;
    this.#pending = pending;
    return pending;
  }

  #replace(snapshot: PendingSnapshot, digest: TableDigest): void {
    this.#byId = snapshot.routes;
    this.#byPort = new Map();
    this.#bySubdomain = new Map();
    for (const route of this.#byId.values()) this.#index(route);
    this.#epoch = snapshot.epoch;
    this.#revision = snapshot.revision;
    this.#digest = digest;
  }

  #upsert(route: WireRoute): void {
    this.#remove(route.id);
    this.#byId.set(route.id, route);
    this.#digest.toggle(route.id, route.revision);
    this.#index(route);
  }

  #remove(id: string): void {
    const route = this.#byId.get(id);
    if (route === undefined) return;

    this.#byId.delete(id);
    this.#digest.toggle(route.id, route.revision);
    // Another route of the same diff may already have taken the port or subdomain.
    if (route.port !== null && this.#byPort.get(route.port) === route) {
      this.#byPort.delete(route.port);
    }
    const label = route.subdomain?.toLowerCase();
    if (label !== undefined && this.#bySubdomain.get(label) === route) {
      this.#bySubdomain.delete(label);
    }
  }

  #index(route: WireRoute): void {
    if (route.port !== null) this.#byPort.set(route.port, route);
    if (route.subdomain !== null) this.#bySubdomain.set(route.subdomain.toLowerCase(), route);
  }

  #rejectAndDrop(revision: number, error: string): ApplyResult {
    this.drop('digest_mismatch');
    return { status: 'mismatch', revision, error, dropped: true };
  }

  #applied(): ApplyResult {
    return {
      status: 'applied',
      revision: this.#revision ?? 0,
      digest: this.digest,
      routeCount: this.#byId.size,
    };
  }
}

function describeDigestMismatch(
  kind: 'snapshot' | 'diff',
  message: { revision: number; digest: string },
  actual: string,
): string {
  return (
    `Table digest after the ${kind} to revision ${message.revision} is ${actual}, ` +
    `but the coordinator expected ${message.digest}`
  );
}
