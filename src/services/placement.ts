import { randomBytes } from 'node:crypto';
import { domainToASCII } from 'node:url';
import type { RouteProtocol } from '../../proto/index.ts';
import type { WorkerAddresses } from '../store/routes.ts';
import type { Candidate, WorkerRecord } from '../store/workers.ts';

// Placement rules without I/O: which live workers may take a route, which of
// them goes first, the address the route gets there, and why none fits.

const MAX_LABEL_LENGTH = 63;
const SUFFIX_BYTES = 3;
/** Generated names tried on one worker before it counts as having no name left. */
const GENERATED_NAME_ATTEMPTS = 5;

/** Constraints a route puts on the worker that takes it. */
export interface PlacementRequest {
  protocol: RouteProtocol;
  service: string;
  sessionId: string;
  /** Only this worker. */
  workerId?: string;
  /** Only workers whose labels carry each of these values. */
  selector?: Record<string, string>;
  /** This port, on a port-mode worker whose range has it. */
  port?: number;
  /** This subdomain, on a wildcard-mode worker. */
  subdomain?: string;
  /** Only workers of this mode; a moved route keeps its mode. */
  frontendMode?: 'port' | 'wildcard';
  /** A worker that must not take the route: the one it moves away from. */
  excludeWorkerId?: string;
  /** The subdomain tried before the generated one: a moved route keeps its name when free. */
  preferredSubdomain?: string;
}

export interface Placement {
  worker: Candidate;
  port: number | null;
  subdomain: string | null;
  url: string;
}

/** Reason a live worker cannot take a route. */
export type Mismatch =
  | 'not_pinned'
  | 'excluded'
  | 'protocol'
  | 'mode'
  | 'selector'
  | 'port_range'
  | 'full';

/** Returns whether a worker serves a route protocol: tcp on tcp workers, the rest on http. */
export function servesProtocol(worker: WorkerRecord, protocol: RouteProtocol): boolean {
  if (protocol !== 'tcp') return worker.protocols.includes('http');
  return worker.frontend_mode === 'port' && worker.protocols.includes('tcp');
}

/** Returns whether a worker has room for one more route: capacity, and a free port in port mode. */
export function hasRoom(worker: Candidate): boolean {
  if (worker.capacity !== null && worker.routeCount >= worker.capacity) return false;
  return worker.freePorts === null || worker.freePorts > 0;
}

/** Returns whether `labels` carry every key of `selector` with the same value. */
export function matchesSelector(
  labels: Record<string, string>,
  selector: Record<string, string> | undefined,
): boolean {
  if (selector === undefined) return true;
  return Object.entries(selector).every(([key, value]) => labels[key] === value);
}

function requiredMode(request: PlacementRequest): 'port' | 'wildcard' | undefined {
  if (request.port !== undefined) return 'port';
  if (request.subdomain !== undefined) return 'wildcard';
  return request.frontendMode;
}

function hasPortInRange(worker: WorkerRecord, port: number): boolean {
  const range = worker.port_range;
  return range !== null && port >= range[0] && port <= range[1];
}

/** Returns why `worker` cannot take the route, or null when it can. */
export function findMismatch(worker: Candidate, request: PlacementRequest): Mismatch | null {
  if (request.workerId !== undefined && worker.id !== request.workerId) return 'not_pinned';
  if (worker.id === request.excludeWorkerId) return 'excluded';
  if (!servesProtocol(worker, request.protocol)) return 'protocol';
  const mode = requiredMode(request);
  if (mode !== undefined && worker.frontend_mode !== mode) return 'mode';
  if (!matchesSelector(worker.labels, request.selector)) return 'selector';
  if (request.port !== undefined && !hasPortInRange(worker, request.port)) return 'port_range';
  if (!hasRoom(worker)) return 'full';
  return null;
}

/**
 * Orders workers connected first: a worker that registered but never opened
 * a session takes routes only when no other fits. Then least loaded, then by
 * authority, so placement is deterministic.
 */
export function byLoad(a: Candidate, b: Candidate): number {
  if (a.isConnected !== b.isConnected) return a.isConnected ? -1 : 1;
  if (a.routeCount !== b.routeCount) return a.routeCount - b.routeCount;
  if (a.authority === b.authority) return 0;
  return a.authority < b.authority ? -1 : 1;
}

/** Returns the workers that can take the route, least loaded first. */
export function eligibleWorkers(workers: Candidate[], request: PlacementRequest): Candidate[] {
  return workers.filter((worker) => findMismatch(worker, request) === null).sort(byLoad);
}

function describeMismatch(mismatch: Mismatch, request: PlacementRequest): string {
  switch (mismatch) {
    case 'not_pinned':
      return `not worker ${request.workerId}`;
    case 'excluded':
      return 'the worker the route leaves';
    case 'protocol':
      return request.protocol === 'tcp'
        ? 'without tcp in port mode'
        : `without protocol http (needed by ${request.protocol})`;
    case 'mode':
      return `not in ${requiredMode(request)} mode`;
    case 'selector':
      return `not matching worker_selector ${JSON.stringify(request.selector)}`;
    case 'port_range':
      return `without port ${request.port} in its port range`;
    case 'full':
      return 'full (capacity reached or no free port)';
  }
}

/**
 * Explains why no live worker can take the route, counting the reason of each
 * one, such as "of 3 live workers: 2 full (capacity reached or no free port),
 * 1 without tcp in port mode".
 */
export function explainNoWorker(workers: Candidate[], request: PlacementRequest): string {
  if (workers.length === 0) {
    return 'No worker is alive, so no route can be placed; start or register a worker.';
  }
  const pinned = workers.find((worker) => worker.id === request.workerId);
  if (pinned) {
    const mismatch = findMismatch(pinned, request) ?? 'full';
    const reason = describeMismatch(mismatch, request);
    return `Worker ${pinned.authority} cannot take this route: it is ${reason}.`;
  }
  const counts = new Map<string, number>();
  for (const worker of workers) {
    const reason = describeMismatch(findMismatch(worker, request) ?? 'full', request);
    counts.set(reason, (counts.get(reason) ?? 0) + 1);
  }
  const parts = [...counts].map(([reason, count]) => `${count} ${reason}`);
  const noun = workers.length === 1 ? 'live worker' : 'live workers';
  return (
    `No live worker can take this route; of ${workers.length} ${noun}: ${parts.join(', ')}. ` +
    'Register a worker that fits, or free routes.'
  );
}

/**
 * Normalises text to one DNS label of at most `maxLength` characters: lower
 * case, characters other than letters and digits as `-`, and a label with
 * non-ASCII letters spelled in punycode (`xn--…`) as a whole.
 */
export function toDnsLabel(text: string, maxLength = MAX_LABEL_LENGTH): string {
  const cleaned = text
    .normalize('NFC')
    .toLowerCase()
    .replace(/[^a-z0-9\p{L}\p{N}\p{M}]+/gu, '-')
    .replace(/^-+|-+$/g, '');
  // Hint: an ASCII label is cut to length. A punycode label is cut before encoding, because
  // cutting the encoded form would leave invalid punycode.
  const label = /^[\x00-\x7f]*$/.test(cleaned)
    ? cutLabel(cleaned, maxLength)
    : encodeUnicodeLabel(cleaned, maxLength);
  return label || 'route';
}

function cutLabel(label: string, maxLength: number): string {
  return label.slice(0, maxLength).replace(/-+$/, '');
}

function encodeUnicodeLabel(label: string, maxLength: number): string {
  let characters = [...label];
  while (characters.length > 0) {
    const source = characters.join('').replace(/-+$/, '');
    const encoded = domainToASCII(source);
    // Labels that IDNA rejects, such as one starting with a combining mark, lose their
    // non-ASCII characters instead.
    if (encoded === '' || encoded.includes('.')) {
      return cutLabel(source.replace(/[^\x00-\x7f]+/g, '-').replace(/^-+|-{2,}/g, '-'), maxLength)
        .replace(/^-+/, '');
    }
    if (encoded.length <= maxLength) return encoded;
    characters = characters.slice(0, -1);
  }
  return '';
}

/**
 * Returns the generated subdomain of a route: `<service>-<session_id>` as one
 * label, or with `suffix` appended (`…-<suffix>`) within the same 63 characters.
 */
export function generatedSubdomain(service: string, sessionId: string, suffix?: string): string {
  if (suffix === undefined) return toDnsLabel(`${service}-${sessionId}`);
  const base = toDnsLabel(`${service}-${sessionId}`, MAX_LABEL_LENGTH - suffix.length - 1);
  return `${base}-${suffix}`;
}

/** Returns a short random suffix for a generated subdomain that is taken. */
export function randomSuffix(): string {
  return randomBytes(SUFFIX_BYTES).toString('hex');
}

/**
 * Yields the subdomains to try, in order, for a route without a requested
 * one: its previous name, the generated name, then generated names with a
 * random suffix.
 */
export function* subdomainChoices(request: PlacementRequest): Generator<string> {
  if (request.preferredSubdomain) yield request.preferredSubdomain;
  yield generatedSubdomain(request.service, request.sessionId);
  for (let i = 1; i < GENERATED_NAME_ATTEMPTS; i++) {
    yield generatedSubdomain(request.service, request.sessionId, randomSuffix());
  }
}

/** Returns the lowest port of `[first, last]` at or above `from` that `used` lacks, or null. */
export function lowestFreePort(
  range: [number, number],
  used: { has(port: number): boolean },
  from = range[0],
): number | null {
  for (let port = Math.max(from, range[0]); port <= range[1]; port++) {
    if (!used.has(port)) return port;
  }
  return null;
}

/** Builds the URL users open for a route placed on a worker. */
export function routeUrl(
  worker: WorkerRecord,
  protocol: RouteProtocol,
  place: { port: number | null; subdomain: string | null },
): string {
  if (worker.frontend_mode === 'wildcard') {
    const portSuffix = worker.advertised_port ? `:${worker.advertised_port}` : '';
    return `http://${place.subdomain}${worker.wildcard_domain}${portSuffix}`;
  }
  const scheme = protocol === 'tcp' ? 'tcp' : 'http';
  const host = worker.hostname.includes(':') ? `[${worker.hostname}]` : worker.hostname;
  return `${scheme}://${host}:${place.port}`;
}

/** Builds a placement on `worker` at the given address. */
export function placementAt(
  worker: Candidate,
  protocol: RouteProtocol,
  address: { port: number | null; subdomain: string | null },
): Placement {
  return { worker, ...address, url: routeUrl(worker, protocol, address) };
}

/** A route the planner could not place, and why. */
export interface Unplaced {
  kind: 'no_worker' | 'conflict';
  detail: string;
  /** The route holding a requested address, for a conflict. */
  conflictingRouteId?: string;
  /** The route of this same plan that took the requested address first, for a conflict. */
  plannedRouteId?: string;
}

export type LoadAddresses = (workerIds: string[]) => Promise<Map<string, WorkerAddresses>>;

/** A worker's addresses as the planner hands them out, with the lowest port not yet checked. */
interface PlannedAddresses extends WorkerAddresses {
  portCursor: number;
}

/** The addresses a planner has read and handed out, by worker id. */
export interface PlannedAddressBook {
  readonly addresses: Map<string, PlannedAddresses>;
}

/**
 * Places many routes against one read of the live workers: loads each
 * worker's addresses in use once, then assigns in memory, keeping load
 * counts, free ports and addresses up to date after each assignment. Run it
 * under the write lock, so no other writer changes what it read.
 */
export class PlacementPlanner {
  readonly #workers: Candidate[];
  readonly #loadAddresses: LoadAddresses;
  readonly #addresses: Map<string, PlannedAddresses>;
  /** Routes placed by this planner; their addresses were not stored before. */
  readonly #plannedRouteIds = new Set<string>();

  /**
   * Copies `workers`, because the planner changes its own load counts.
   * `known` contains addresses of an earlier plan that still match what is
   * stored. The planner goes on from them and reads those workers' addresses
   * no second time.
   */
  constructor(workers: Candidate[], loadAddresses: LoadAddresses, known?: PlannedAddressBook) {
    this.#workers = workers.map((worker) => ({ ...worker }));
    this.#loadAddresses = loadAddresses;
    this.#addresses = known?.addresses ?? new Map();
  }

  /** The addresses as this plan leaves them, for a later plan on the same stored state. */
  get addressBook(): PlannedAddressBook {
    return { addresses: this.#addresses };
  }

  /** Loads the addresses of the given workers now, in one read, for the routes to come. */
  async preload(workerIds: string[]): Promise<void> {
    const missing = workerIds.filter((id) => !this.#addresses.has(id));
    if (missing.length === 0) return;
    for (const [id, addresses] of await this.#loadAddresses(missing)) {
      this.#addresses.set(id, { ...addresses, portCursor: 0 });
    }
  }

  /** Returns the live workers a request could go to, least loaded first. */
  eligible(request: PlacementRequest): Candidate[] {
    return eligibleWorkers(this.#workers, request);
  }

  /** Places route `routeId` and reserves its address, or returns why it cannot go anywhere. */
  async place(request: PlacementRequest, routeId: string): Promise<Placement | Unplaced> {
    const candidates = this.eligible(request);
    if (candidates.length === 0) {
      return { kind: 'no_worker', detail: explainNoWorker(this.#workers, request) };
    }
    if (request.port !== undefined || request.subdomain !== undefined) {
      const result = await this.#placeRequested(candidates, request);
      return isPlaced(result) ? this.#reserve(result, routeId) : result;
    }
    for (const worker of candidates) {
      const placement = await this.#placeAnywhere(worker, request);
      if (placement) return this.#reserve(placement, routeId);
    }
    return { kind: 'no_worker', detail: explainNoWorker(this.#workers, request) };
  }

  /** Gives back the address of a route that leaves `workerId` in this plan. */
  release(workerId: string, address: { port: number | null; subdomain: string | null }): void {
    const worker = this.#workers.find((candidate) => candidate.id === workerId);
    const addresses = this.#addresses.get(workerId);
    if (address.port !== null && addresses?.ports.delete(address.port)) {
      addresses.portCursor = Math.min(addresses.portCursor, address.port);
    }
    if (address.subdomain !== null) addresses?.subdomains.delete(address.subdomain);
    if (!worker) return;
    worker.routeCount -= 1;
    const isInRange = address.port !== null && hasPortInRange(worker, address.port);
    if (worker.freePorts !== null && isInRange) worker.freePorts += 1;
  }

  async #addressesOf(workerId: string): Promise<PlannedAddresses> {
    await this.preload([workerId]);
    return this.#addresses.get(workerId) as PlannedAddresses;
  }

  async #placeRequested(
    candidates: Candidate[],
    request: PlacementRequest,
  ): Promise<Placement | Unplaced> {
    const { port, subdomain } = request;
    let holder: string | undefined;
    for (const worker of candidates) {
      const addresses = await this.#addressesOf(worker.id);
      holder =
        port !== undefined ? addresses.ports.get(port) : addresses.subdomains.get(subdomain!);
      if (holder === undefined) {
        const address = { port: port ?? null, subdomain: port === undefined ? subdomain! : null };
        return placementAt(worker, request.protocol, address);
      }
    }
    const value = port !== undefined ? `Port ${port}` : `Subdomain ${subdomain}`;
    if (holder !== undefined && this.#plannedRouteIds.has(holder)) {
      const detail = `${value} is requested by two routes of this change.`;
      return { kind: 'conflict', detail, plannedRouteId: holder };
    }
    return {
      kind: 'conflict',
      detail: `${value} is taken on every worker that could take this route.`,
      conflictingRouteId: holder,
    };
  }

  async #placeAnywhere(worker: Candidate, request: PlacementRequest): Promise<Placement | null> {
    const addresses = await this.#addressesOf(worker.id);
    if (worker.frontend_mode === 'port') {
      const range = worker.port_range as [number, number];
      const port = lowestFreePort(range, addresses.ports, addresses.portCursor);
      if (port === null) return null;
      // Ports below the cursor are all taken until a release lowers it again.
      addresses.portCursor = port;
      return placementAt(worker, request.protocol, { port, subdomain: null });
    }
    for (const subdomain of subdomainChoices(request)) {
      if (!addresses.subdomains.has(subdomain)) {
        return placementAt(worker, request.protocol, { port: null, subdomain });
      }
    }
    return null;
  }

  #reserve(placement: Placement, routeId: string): Placement {
    const worker = placement.worker;
    const addresses = this.#addresses.get(worker.id) as PlannedAddresses;
    this.#plannedRouteIds.add(routeId);
    if (placement.port !== null) addresses.ports.set(placement.port, routeId);
    if (placement.subdomain !== null) addresses.subdomains.set(placement.subdomain, routeId);
    worker.routeCount += 1;
    const isInRange = placement.port !== null && hasPortInRange(worker, placement.port);
    if (worker.freePorts !== null && isInRange) worker.freePorts -= 1;
    return placement;
  }
}

/** Returns whether a planner result is a placement. */
export function isPlaced(result: Placement | Unplaced): result is Placement {
  return 'worker' in result;
}
