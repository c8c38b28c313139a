import type { Problem } from '../../proto/index.ts';
import { CliError, ProblemError } from './errors.ts';

/** Query parameters; undefined values are left out. */
export type Query = Record<string, string | number | undefined>;

export interface RequestOptions {
  query?: Query;
  body?: unknown;
  /** Statuses besides 2xx whose body is returned instead of raised, e.g. 503 of `/health`. */
  acceptStatuses?: number[];
}

export interface JsonResponse<T> {
  status: number;
  body: T;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/** REST client of the coordinator; every request carries the bearer token. */
export class CoordinatorClient {
  readonly baseUrl: URL;
  readonly timeoutMs: number;
  // Private, so that printing or inspecting the client never shows the token.
  readonly #token: string;

  constructor(baseUrl: URL, token: string, timeoutMs = DEFAULT_TIMEOUT_MS) {
    this.baseUrl = baseUrl;
    this.#token = token;
    this.timeoutMs = timeoutMs;
  }

  /** Sends GET and returns the JSON body of a 2xx response. */
  async get<T>(path: string, query?: Query): Promise<T> {
    const response = await this.request<T>('GET', path, { query });
    return response.body;
  }

  /** Sends one request; raises a ProblemError for a status outside 2xx and `acceptStatuses`. */
  async request<T>(
    method: string,
    path: string,
    options: RequestOptions = {},
  ): Promise<JsonResponse<T>> {
    const url = this.url(path, options.query);
    const response = await this.#fetch(method, url, options.body);
    const isAccepted = response.ok || (options.acceptStatuses ?? []).includes(response.status);
    if (!isAccepted) throw await toProblemError(`${method} ${url.pathname}`, response);
    if (response.status === 204) return { status: 204, body: undefined as T };
    return { status: response.status, body: (await readJson(response, url)) as T };
  }

  /** Builds the URL of `path` with `query` under the base URL. */
  url(path: string, query: Query = {}): URL {
    const url = new URL(path.replace(/^\//, ''), withTrailingSlash(this.baseUrl));
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    return url;
  }

  /** Builds the ws:// or wss:// URL of `path`, for WebSocket endpoints. */
  webSocketUrl(path: string, query: Query = {}): URL {
    const url = this.url(path, query);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url;
  }

  /** Headers that authenticate a request, for callers that open their own connections. */
  authHeaders(): Record<string, string> {
    return { authorization: `Bearer ${this.#token}` };
  }

  async #fetch(method: string, url: URL, body: unknown): Promise<Response> {
    const headers: Record<string, string> = { ...this.authHeaders(), accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    try {
      return await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (error) {
      throw describeFetchFailure(error, url, this.timeoutMs);
    }
  }
}

/** Turns a failed fetch into an error that names the URL and what to do next. */
export function describeFetchFailure(error: unknown, url: URL, timeoutMs: number): CliError {
  const target = `the coordinator at ${url.origin}`;
  if (error instanceof Error && error.name === 'TimeoutError') {
    return new CliError(`Request to ${target} timed out after ${timeoutMs} ms (${url.pathname})`, {
      cause: error,
    });
  }
  const code = errorCode(error);
  if (code === 'ECONNREFUSED') {
    return new CliError(
      `Cannot connect to ${target}: connection refused. Start it with ` +
        'bin/appproxy-coordinator, or set --coordinator-url (APPPROXY_COORDINATOR_URL).',
      { cause: error },
    );
  }
  const reason = code ?? (error instanceof Error ? error.message : String(error));
  return new CliError(`Cannot reach ${target}: ${reason}`, { cause: error });
}

/** Finds the system error code (ECONNREFUSED, ENOTFOUND, ...) behind a fetch or socket error. */
export function errorCode(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 4 && current instanceof Error; depth++) {
    const code = (current as NodeJS.ErrnoException).code;
    if (typeof code === 'string') return code;
    // AggregateError contains one error per address tried, and the first names the cause.
    const inner = current instanceof AggregateError ? current.errors[0] : current.cause;
    current = inner;
  }
  return undefined;
}

async function toProblemError(request: string, response: Response): Promise<ProblemError> {
  const text = await response.text().catch(() => '');
  return new ProblemError(request, response.status, parseProblem(text, response.statusText));
}

/** Reads a problem+json body; any other body becomes a problem titled by the status text. */
export function parseProblem(text: string, statusText: string): Partial<Problem> {
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed !== null && typeof parsed === 'object') return parsed as Partial<Problem>;
  } catch {
    // Not JSON, because a proxy in front of the coordinator may respond with plain text or HTML.
  }
  return { title: statusText || 'error response' };
}

async function readJson(response: Response, url: URL): Promise<unknown> {
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch (error) {
    const start = JSON.stringify(text.slice(0, 80));
    throw new CliError(`Invalid JSON from ${url.origin}${url.pathname}: body starts ${start}`, {
      cause: error,
    });
  }
}

function withTrailingSlash(url: URL): URL {
  const copy = new URL(url);
  if (!copy.pathname.endsWith('/')) copy.pathname += '/';
  return copy;
}
