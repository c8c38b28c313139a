import { TableDigest, type Route } from '../../proto/index.ts';
import { readMeta, readTableDigest, workerChangesAfter } from '../store/changes.ts';
import type { Sql } from '../store/database.ts';
import { workerRouteTexts } from '../store/routes.ts';
import type { ChangeRecord } from '../store/writer.ts';

// How a worker's table gets from one revision to another: diffs built from
// change-log rows, snapshots streamed from one consistent read, and the plan
// for a worker that resumes.

export interface TableDelta {
  upserts: Route[];
  removes: string[];
  /** Digest of the table after the delta. */
  digest: TableDigest;
}

/**
 * Folds ordered route changes after some base revision into one delta for a
 * worker's table. `digest` is the table's digest at the base revision; each
 * route's first change names where it was then, its last where it is now.
 */
export function foldChanges(
  workerId: string,
  changes: ChangeRecord[],
  digest: TableDigest,
): TableDelta {
  const delta: TableDelta = { upserts: [], removes: [], digest: digest.clone() };
  for (const { first, last } of firstAndLast(changes).values()) {
    const wasOnWorker = first.prev_worker_id === workerId;
    const isOnWorker = last.worker_id === workerId && last.type !== 'route.deleted';
    const id = String(last.route_id);
    if (wasOnWorker) delta.digest.toggle(id, Number(first.prev_revision));
    if (isOnWorker) {
      delta.digest.toggle(id, last.revision);
      delta.upserts.push(last.route as Route);
    } else if (wasOnWorker) {
      delta.removes.push(id);
    }
  }
  return delta;
}

function firstAndLast(changes: ChangeRecord[]) {
  const byRoute = new Map<string, { first: ChangeRecord; last: ChangeRecord }>();
  for (const change of changes) {
    if (change.route_id === null) continue;
    const entry = byRoute.get(change.route_id);
    if (entry) entry.last = change;
    else byRoute.set(change.route_id, { first: change, last: change });
  }
  return byRoute;
}

/** Returns whether a change alters the table of the given worker. */
export function touchesWorker(change: ChangeRecord, workerId: string): boolean {
  return (
    change.type.startsWith('route.') &&
    (change.worker_id === workerId || change.prev_worker_id === workerId)
  );
}

/** JSON text of each change's route, shared by every session the change goes to. */
const routeTexts = new WeakMap<ChangeRecord, string>();

function routeText(change: ChangeRecord): string {
  let text = routeTexts.get(change);
  if (text === undefined) {
    text = JSON.stringify(change.route);
    routeTexts.set(change, text);
  }
  return text;
}

/** A diff ready to send, with what the session keeps until the worker acknowledges it. */
export interface DiffText {
  text: string;
  fromRevision: number;
  revision: number;
  digest: TableDigest;
  /** Ids of the routes the diff upserts or removes. */
  routeIds: string[];
  /** Commit times (epoch ms) of the changes folded into the diff. */
  commitTimes: number[];
  /** How many of the request's changes this diff and the ones before it carry. */
  changesCarried: number;
}

export interface DiffRequest {
  workerId: string;
  epoch: string;
  /** Changes of the worker's table after `fromRevision`, in revision order. */
  changes: ChangeRecord[];
  fromRevision: number;
  /** Revision of the last diff; no change of this worker lies between its changes and it. */
  toRevision: number;
  /** The table's digest at `fromRevision`. */
  digest: TableDigest;
  /** Target size of one diff message; a single route larger than this still goes alone. */
  maxBytes: number;
  /** Whether to send a diff even when the changes cancel out, as a reply to hello must. */
  isReplyRequired: boolean;
}

/**
 * Builds the diffs that take a worker's table from `fromRevision` to
 * `toRevision`: one diff when it fits in `maxBytes`, else several, cut at
 * change boundaries so each ends at the revision of its last change.
 */
export function buildDiffs(request: DiffRequest): DiffText[] {
  const diffs: DiffText[] = [];
  let from = request.fromRevision;
  let digest = request.digest;
  let carried = 0;
  const pieces = splitBySize(request.changes, request.maxBytes);
  pieces.forEach((piece, i) => {
    const isLast = i === pieces.length - 1;
    carried += piece.length;
    const delta = foldChanges(request.workerId, piece, digest);
    const isEmpty = delta.upserts.length === 0 && delta.removes.length === 0;
    if (isEmpty && !(isLast && request.isReplyRequired && diffs.length === 0)) return;
    const revision = isLast ? request.toRevision : (piece.at(-1) as ChangeRecord).revision;
    diffs.push({ ...diffText(request, piece, delta, from, revision), changesCarried: carried });
    from = revision;
    digest = delta.digest;
  });
  return diffs;
}

/** Cuts changes into runs whose routes' JSON stays under `maxBytes`; always at least one run. */
function splitBySize(changes: ChangeRecord[], maxBytes: number): ChangeRecord[][] {
  const pieces: ChangeRecord[][] = [[]];
  let bytes = 0;
  for (const change of changes) {
    const size = change.route ? Buffer.byteLength(routeText(change)) : 40;
    const current = pieces[pieces.length - 1];
    if (current.length > 0 && bytes + size > maxBytes) {
      pieces.push([]);
      bytes = 0;
    }
    pieces[pieces.length - 1].push(change);
    bytes += size;
  }
  return pieces;
}

function diffText(
  request: DiffRequest,
  piece: ChangeRecord[],
  delta: TableDelta,
  from: number,
  revision: number,
): Omit<DiffText, 'changesCarried'> {
  const lastChanges = new Map<string, ChangeRecord>();
  for (const change of piece) if (change.route_id) lastChanges.set(change.route_id, change);
  const lastChange = (id: string) => lastChanges.get(id) as ChangeRecord;
  const upserts = delta.upserts.map((route) => routeText(lastChange(route.id)));
  const text =
    `{"type":"diff","epoch":${JSON.stringify(request.epoch)},"from_revision":${from},` +
    `"revision":${revision},"upserts":[${upserts.join(',')}],` +
    `"removes":${JSON.stringify(delta.removes)},"digest":"${delta.digest.toHex()}"}`;
  return {
    text,
    fromRevision: from,
    revision,
    digest: delta.digest,
    routeIds: [...delta.upserts.map((route) => route.id), ...delta.removes],
    commitTimes: piece.map((change) => Date.parse(change.at)),
  };
}

/** Builds a diff that sends routes again without moving the table's revision or digest. */
export function refreshDiffText(epoch: string, revision: number, digest: string, routes: Route[]) {
  return JSON.stringify({
    type: 'diff',
    epoch,
    from_revision: revision,
    revision,
    upserts: routes,
    removes: [],
    digest,
  });
}

/** Summary of a streamed snapshot, once its last message went out. */
export interface SnapshotSummary {
  revision: number;
  digest: string;
  routeCount: number;
  messageCount: number;
  bytes: number;
}

export interface SnapshotOptions {
  workerId: string;
  epoch: string;
  /** Target size of one snapshot message; a single route larger than this still goes alone. */
  chunkBytes: number;
  /** Routes read from the database at a time. */
  pageSize: number;
  /** Called once the snapshot's revision and digest are known, before any message. */
  onStart?: (revision: number, digest: string) => void;
  /**
   * Sends one message; the stream waits for it, so its pace bounds memory.
   * Throwing ends the stream and its transaction.
   */
  send: (text: string, isLast: boolean) => Promise<void>;
}

/**
 * Streams a worker's whole table at one revision. It reads the table through
 * a cursor in one read-only REPEATABLE READ transaction and sends messages of
 * about `chunkBytes`, all but the last with `more: true`. Each carries the
 * digest of the whole table. Memory stays at about one batch of rows and one
 * message.
 */
export async function streamSnapshot(sql: Sql, options: SnapshotOptions): Promise<SnapshotSummary> {
  return sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (tx) => {
    const meta = await readMeta(tx);
    const digest = await readTableDigest(tx, options.workerId);
    options.onStart?.(meta.revision, digest);
    const chunker = new SnapshotChunker(options, meta.revision, digest);
    for await (const page of workerRouteTexts(tx, options.workerId, options.pageSize)) {
      for (const route of page) await chunker.add(route);
    }
    return chunker.finish();
  }) as Promise<SnapshotSummary>;
}

/** Packs route JSON into snapshot messages, holding one back to learn whether more follow. */
class SnapshotChunker {
  readonly #options: SnapshotOptions;
  readonly #head: string;
  readonly #tail: string;
  #routes: string[] = [];
  #bytes = 0;
  #held: string[] | null = null;
  readonly #summary: SnapshotSummary;

  constructor(options: SnapshotOptions, revision: number, digest: string) {
    this.#options = options;
    const epoch = JSON.stringify(options.epoch);
    this.#head = `{"type":"snapshot","epoch":${epoch},"revision":${revision},"routes":[`;
    this.#tail = `],"digest":"${digest}"`;
    this.#summary = { revision, digest, routeCount: 0, messageCount: 0, bytes: 0 };
  }

  async add(route: string): Promise<void> {
    const size = Buffer.byteLength(route) + 1;
    if (this.#routes.length > 0 && this.#bytes + size > this.#options.chunkBytes) {
      await this.#hold(this.#routes);
      this.#routes = [];
      this.#bytes = 0;
    }
    this.#routes.push(route);
    this.#bytes += size;
    this.#summary.routeCount += 1;
  }

  async finish(): Promise<SnapshotSummary> {
    await this.#hold(this.#routes);
    await this.#send(this.#held as string[], false);
    return this.#summary;
  }

  /** Sends the held message, flagged as followed by more, and keeps `routes` back instead. */
  async #hold(routes: string[]): Promise<void> {
    if (this.#held) await this.#send(this.#held, true);
    this.#held = routes;
  }

  async #send(routes: string[], hasMore: boolean): Promise<void> {
    const text = `${this.#head}${routes.join(',')}${this.#tail}${hasMore ? ',"more":true}' : '}'}`;
    this.#summary.messageCount += 1;
    this.#summary.bytes += Buffer.byteLength(text);
    await this.#options.send(text, !hasMore);
  }
}

export type ResumePlan =
  | {
      kind: 'diff';
      fromRevision: number;
      revision: number;
      /** The table's digest at `fromRevision`, equal to the one the worker sent. */
      digest: TableDigest;
      /** Changes of the worker's table after `fromRevision`, in revision order. */
      changes: ChangeRecord[];
    }
  | { kind: 'snapshot'; reason: string };

/**
 * Decides how a worker that has the table of `fromRevision` with `digest`
 * catches up. It gets a diff when the change log still covers that revision,
 * with at most `maxChanges` changes of this worker, and the digest matches
 * the table the coordinator expects there. Otherwise it gets a snapshot.
 */
export async function planResume(
  sql: Sql,
  request: { workerId: string; fromRevision: number; digest: string; maxChanges: number },
): Promise<ResumePlan> {
  const { workerId, fromRevision, maxChanges } = request;
  return sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (tx) => {
    const meta = await readMeta(tx);
    if (fromRevision > meta.revision) return snapshotPlan('revision is ahead of the database');
    if (fromRevision < meta.compactedThrough) return snapshotPlan('change log compacted');
    const stored = new TableDigest(await readTableDigest(tx, workerId));
    const changes = await workerChangesAfter(tx, workerId, fromRevision, maxChanges + 1);
    if (changes.length > maxChanges) return snapshotPlan('too many changes; a snapshot is smaller');
    const expected = digestBefore(workerId, stored, changes);
    if (expected.toHex() !== request.digest) {
      return snapshotPlan('digest differs from the stored table');
    }
    return { kind: 'diff', fromRevision, revision: meta.revision, digest: expected, changes };
  }) as Promise<ResumePlan>;
}

function snapshotPlan(reason: string): ResumePlan {
  return { kind: 'snapshot', reason };
}

/** Rebuilds the digest a worker's table had before `changes` from its digest after them. */
function digestBefore(workerId: string, after: TableDigest, changes: ChangeRecord[]): TableDigest {
  const digest = after.clone();
  for (const { first, last } of firstAndLast(changes).values()) {
    const id = String(first.route_id);
    if (last.worker_id === workerId && last.type !== 'route.deleted') {
      digest.toggle(id, last.revision);
    }
    if (first.prev_worker_id === workerId) digest.toggle(id, Number(first.prev_revision));
  }
  return digest;
}
