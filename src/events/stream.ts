import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import * as v from 'valibot';
import { WebSocketServer, type WebSocket } from 'ws';
import { CloseCode, EventStreamQuerySchema } from '../../proto/index.ts';
import type { Authenticator } from '../coordinator/tokens.ts';
import { CompactedError } from '../errors.ts';
import type { ChangeFeed } from '../hub/feed.ts';
import type { Logger } from '../log.ts';
import type { EventService } from '../services/events.ts';
import { toEvent, type ChangeFilter } from '../store/changes.ts';
import type { ChangeRecord } from '../store/writer.ts';

const REPLAY_PAGE = 1000;

export interface EventStreamOptions {
  feed: ChangeFeed;
  events: EventService;
  auth: Authenticator;
  log: Logger;
  /** Unsent bytes past which a subscriber is closed as too slow. */
  maxBufferedBytes: number;
}

/**
 * Serves `GET /events/stream`: stored events after `since`, then live ones,
 * in revision order with no gaps or repeats.
 */
export class EventStreamServer {
  readonly #options: EventStreamOptions;
  readonly #server = new WebSocketServer({ noServer: true, maxPayload: 4096 });

  constructor(options: EventStreamOptions) {
    this.#options = options;
  }

  async handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const status = await this.#authorize(request);
    if (status !== 200) return rejectUpgrade(socket, status);
    const url = new URL(request.url ?? '/', 'http://localhost');
    const parsed = v.safeParse(EventStreamQuerySchema, Object.fromEntries(url.searchParams));
    if (!parsed.success) return rejectUpgrade(socket, 400);
    this.#server.handleUpgrade(request, socket, head, (ws) => {
      // ws closes the socket itself after a bad frame (1002, or 1009 when too large); without
      // a listener its 'error' event would stop the process.
      ws.on('error', (error) => this.#options.log.debug({ err: error }, 'event stream client error'));
      void this.#serve(ws, parsed.output).catch((error) => {
        this.#options.log.error({ err: error }, 'event stream failed');
        ws.close(1011, 'internal error');
      });
    });
  }

  close(): void {
    for (const client of this.#server.clients) client.close(CloseCode.goingAway, 'shutting down');
  }

  /** Open stream connections, for the subscribers gauge. */
  get subscriberCount(): number {
    return this.#server.clients.size;
  }

  async #authorize(request: IncomingMessage): Promise<number> {
    const match = /^Bearer ([^\s]+)$/.exec(request.headers.authorization ?? '');
    if (!match) return 401;
    const principal = await this.#options.auth.identify(match[1]);
    if (principal === null) return 401;
    return principal.kind === 'manager' || principal.kind === 'read' ? 200 : 403;
  }

  async #serve(ws: WebSocket, query: v.InferOutput<typeof EventStreamQuerySchema>) {
    const filter: ChangeFilter = {};
    if (query.session_id !== undefined) filter.session_id = query.session_id;
    if (query.worker_id !== undefined) filter.worker_id = query.worker_id;
    const subscriber = new Subscriber(ws, filter, this.#options);
    // Subscribe first and replay second: live changes wait in order behind the replay.
    const startRevision = this.#options.feed.revision;
    const unsubscribe = this.#options.feed.subscribe((changes) => subscriber.live(changes));
    ws.on('close', unsubscribe);
    const since = query.since ?? startRevision;
    try {
      await subscriber.replay(since, startRevision);
    } catch (error) {
      if (!(error instanceof CompactedError)) throw error;
      ws.close(CloseCode.eventsCompacted, `since ${since} compacted; oldest ${error.oldestRevision}`);
    }
  }
}

/** One stream client: replays stored events, then forwards live ones. */
class Subscriber {
  readonly #ws: WebSocket;
  readonly #filter: ChangeFilter;
  readonly #options: EventStreamOptions;
  #backlog: ChangeRecord[] = [];
  #isReplaying = true;
  /** Every change up to this revision has been sent or filtered out. */
  #coveredRevision = 0;
  #lastSentRevision = 0;

  constructor(ws: WebSocket, filter: ChangeFilter, options: EventStreamOptions) {
    this.#ws = ws;
    this.#filter = filter;
    this.#options = options;
  }

  /** Sends stored changes in (since, upTo], then the live ones held meanwhile. */
  async replay(since: number, upTo: number): Promise<void> {
    let cursor = since;
    this.#coveredRevision = since;
    while (cursor < upTo) {
      const page = await this.#options.events.changesAfter(cursor, REPLAY_PAGE, this.#filter);
      const inRange = page.filter((change) => change.revision <= upTo);
      for (const change of inRange) this.#send(change);
      if (page.length < REPLAY_PAGE || inRange.length < page.length) break;
      cursor = page[page.length - 1].revision;
    }
    this.#coveredRevision = Math.max(this.#coveredRevision, upTo);
    this.#isReplaying = false;
    this.live(this.#backlog);
    this.#backlog = [];
  }

  live(changes: ChangeRecord[]): void {
    if (this.#isReplaying) {
      this.#backlog.push(...changes);
      return;
    }
    for (const change of changes) {
      if (change.revision <= this.#coveredRevision) continue;
      this.#coveredRevision = change.revision;
      if (this.#matches(change)) this.#send(change);
    }
  }

  #matches(change: ChangeRecord): boolean {
    const { session_id: sessionId, worker_id: workerId } = this.#filter;
    if (sessionId !== undefined && change.session_id !== sessionId) return false;
    if (workerId === undefined) return true;
    return change.worker_id === workerId || change.prev_worker_id === workerId;
  }

  #send(change: ChangeRecord): void {
    if (this.#ws.readyState !== this.#ws.OPEN) return;
    if (this.#ws.bufferedAmount > this.#options.maxBufferedBytes) {
      const reason = `too slow; last delivered revision ${this.#lastSentRevision}`;
      this.#ws.close(CloseCode.tooSlow, reason);
      return;
    }
    this.#ws.send(JSON.stringify(toEvent(change)));
    this.#lastSentRevision = change.revision;
  }
}

function rejectUpgrade(socket: Duplex, status: number): void {
  const text = { 400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden' }[status] ?? 'Error';
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}
