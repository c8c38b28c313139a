import { randomUUID } from 'node:crypto';
import type { CreateRouteBody, Route } from '../../proto/index.ts';
import { AppError, ConflictError, DatabaseUnavailableError } from '../errors.ts';
import * as store from '../store/routes.ts';
import { placementCandidates } from '../store/workers.ts';
import { toAppError, type WriteTx, type Writer } from '../store/writer.ts';
import {
  isPlaced,
  PlacementPlanner,
  type PlannedAddressBook,
  type Unplaced,
} from './placement.ts';
import {
  newRoute,
  noWorkerError,
  placementRequest,
  recordCreated,
} from './route-changes.ts';

/** Most creates one transaction takes; more wait for the next one. */
const MAX_CREATES_PER_JOB = 256;

export interface CreateResult {
  route: Route;
  isCreated: boolean;
}

type Outcome = { ok: true; value: CreateResult } | { ok: false; error: unknown };

interface PendingCreate {
  body: CreateRouteBody;
  resolve: (result: CreateResult) => void;
  reject: (error: unknown) => void;
}

/** The plan state a committed create job hands to the next one. */
interface PlanState {
  book: PlannedAddressBook;
  /** The revision the job committed at; the book is valid while it is the latest. */
  revision: number;
}

/** Decides whether a route body matches the stored route of its session and service. */
export type MatchExisting = (existing: Route, body: CreateRouteBody) => Route;

/** Creates one route with per-route queries, inside a write job. */
export type CreateOne = (tx: WriteTx, body: CreateRouteBody) => Promise<CreateResult>;

/**
 * Creates routes in batches: the creates that arrive while the writer is busy
 * share one write job, which reads existing routes and candidate workers
 * once, places every route in memory and inserts them in one statement. A
 * lone create runs at once, so batching adds no delay.
 */
export class CreateBatcher {
  readonly #writer: Writer;
  readonly #matchExisting: MatchExisting;
  readonly #createOne: CreateOne;
  #pending: PendingCreate[] = [];
  #isJobQueued = false;
  #lastPlan: PlanState | undefined;

  constructor(writer: Writer, matchExisting: MatchExisting, createOne: CreateOne) {
    this.#writer = writer;
    this.#matchExisting = matchExisting;
    this.#createOne = createOne;
  }

  create(body: CreateRouteBody): Promise<CreateResult> {
    return new Promise((resolve, reject) => {
      this.#pending.push({ body, resolve, reject });
      if (!this.#isJobQueued) this.#queueJob();
    });
  }

  #queueJob(): void {
    this.#isJobQueued = true;
    let taken: PendingCreate[] | undefined;
    const take = () => {
      if (taken) return taken;
      taken = this.#pending.splice(0, MAX_CREATES_PER_JOB);
      this.#isJobQueued = false;
      if (this.#pending.length > 0) this.#queueJob();
      return taken;
    };
    const job = this.#writer.run(async (tx) => {
      // The creates waiting when the job starts are its own; the writer may run it twice.
      const creates = take();
      // The planner changes the last plan's address book in place. A run may roll back, so it
      // takes the book away, and only a commit hands a book on.
      const lastPlan = this.#lastPlan;
      this.#lastPlan = undefined;
      const isPlanKnown = lastPlan?.revision === tx.revision;
      if (creates.length === 1 && !isPlanKnown) return this.#createAlone(tx, creates[0].body);
      return createAll(tx, creates, isPlanKnown ? lastPlan : undefined, this.#matchExisting);
    });
    job.then(
      ({ outcomes, plan }: { outcomes: Outcome[]; plan?: PlanState }) => {
        // Set only after the commit: a rolled-back plan must never be reused.
        this.#lastPlan = plan;
        taken?.forEach((create, i) => settle(create, outcomes[i]));
      },
      (error) => {
        this.#lastPlan = undefined;
        // A job that timed out before it ran still owns the creates waiting for it.
        const creates = take();
        const failure = toAppError(error);
        if (creates.length > 1 && !(failure instanceof DatabaseUnavailableError)) {
          // One create broke the shared statement: each runs alone, so only it fails.
          for (const create of creates) this.#runAlone(create);
          return;
        }
        for (const create of creates) create.reject(failure);
      },
    );
  }

  #runAlone(create: PendingCreate): void {
    this.#writer.run((tx) => this.#createOne(tx, create.body)).then(create.resolve, (error) => {
      create.reject(toAppError(error));
    });
  }

  /**
   * Creates a lone route with per-route queries: reading every address of a
   * large worker for one route would cost more than it saves.
   */
  async #createAlone(tx: WriteTx, body: CreateRouteBody): Promise<{ outcomes: Outcome[] }> {
    const writesBefore = tx.writeCount;
    try {
      return { outcomes: [{ ok: true, value: await this.#createOne(tx, body) }] };
    } catch (error) {
      // Failing before its first write leaves the transaction usable by the other jobs.
      const isClean = error instanceof AppError && tx.writeCount === writesBefore;
      if (isClean) return { outcomes: [{ ok: false, error }] };
      throw error;
    }
  }
}

function settle(create: PendingCreate, outcome: Outcome): void {
  if (outcome.ok) create.resolve(outcome.value);
  else create.reject(outcome.error);
}

async function createAll(
  tx: WriteTx,
  creates: PendingCreate[],
  lastPlan: PlanState | undefined,
  matchExisting: MatchExisting,
): Promise<{ outcomes: Outcome[]; plan: PlanState }> {
  const keys = creates.map(({ body }) => ({ sessionId: body.session_id, service: body.service }));
  const [stored, workers] = await Promise.all([
    store.findRoutesBySessionServices(tx.sql, keys),
    placementCandidates(tx.sql),
  ]);
  const existing = new Map(stored.map((route) => [keyOf(route.session_id, route.service), route]));
  // The caller passes the last plan only while its revision is still the latest, and every
  // route change takes a revision, so its addresses are still the stored ones.
  const planner = new PlacementPlanner(workers, (ids) => store.addressesInUse(tx.sql, ids), lastPlan?.book);

  const outcomes: Outcome[] = [];
  const created: Route[] = [];
  for (const { body } of creates) {
    const key = keyOf(body.session_id, body.service);
    const found = existing.get(key);
    if (found) {
      outcomes.push(matchOutcome(() => matchExisting(found, body)));
      continue;
    }
    const id = randomUUID();
    const request = placementRequest(body, body.session_id);
    const placement = await planner.place(request, id);
    if (!isPlaced(placement)) {
      const error = placement.kind === 'conflict'
        ? conflictOf(placement)
        : await noWorkerError(tx.sql, workers, request);
      outcomes.push({ ok: false, error });
      continue;
    }
    const route = newRoute({ ...body, id, placement, tx });
    recordCreated(tx, route);
    created.push(route);
    existing.set(key, route);
    outcomes.push({ ok: true, value: { route, isCreated: true } });
  }
  await store.insertRoutes(tx.sql, created);
  return { outcomes, plan: { book: planner.addressBook, revision: tx.revision } };
}

/** Builds the 409 for an address taken before, or by a route created earlier in the batch. */
function conflictOf(unplaced: Unplaced): ConflictError {
  if (unplaced.plannedRouteId === undefined) {
    return new ConflictError(unplaced.detail, unplaced.conflictingRouteId);
  }
  return new ConflictError(
    `The requested address is taken by route ${unplaced.plannedRouteId}, created just before.`,
    unplaced.plannedRouteId,
  );
}

function matchOutcome(match: () => Route): Outcome {
  try {
    return { ok: true, value: { route: match(), isCreated: false } };
  } catch (error) {
    if (error instanceof AppError) return { ok: false, error };
    throw error;
  }
}

function keyOf(sessionId: string, service: string): string {
  return JSON.stringify([sessionId, service]);
}
