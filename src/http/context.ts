import type { ParameterizedContext } from 'koa';
import type { RouterContext } from '@koa/router';
import type { Principal } from '../coordinator/tokens.ts';
import type { Authenticator } from '../coordinator/tokens.ts';
import type { Logger } from '../log.ts';
import type { RequestObservation } from '../metrics.ts';
import type { EventService } from '../services/events.ts';
import type { RouteService } from '../services/routes.ts';
import type { Health } from '../services/status.ts';
import type { WorkerService } from '../services/workers.ts';

/** Services and hooks of the REST layer; each service member is the part of it the layer uses. */
export interface HttpDeps {
  routes: Pick<
    RouteService,
    | 'get'
    | 'list'
    | 'sessionRoutes'
    | 'findByHost'
    | 'findByPort'
    | 'create'
    | 'patch'
    | 'remove'
    | 'removeSession'
    | 'replaceSession'
  >;
  workers: Pick<WorkerService, 'get' | 'list' | 'register' | 'deregister' | 'drain'>;
  events: Pick<EventService, 'list'>;
  auth: Pick<Authenticator, 'identify'>;
  /** Reads the database state for `GET /health`; `db: "down"` turns into a 503. */
  health: () => Promise<Health>;
  log: Logger;
  /** Renders Prometheus metrics; without it `GET /metrics` returns 404. */
  metrics?: () => Promise<{ contentType: string; body: string }>;
  /** Called once per finished request, for the request duration metric. */
  observeRequest?: (request: RequestObservation) => void;
  /**
   * Resolves true once every connected instance of the route's worker has
   * acknowledged `revision`, or false after `timeoutMs`.
   */
  waitForApplied?: (routeId: string, revision: number, timeoutMs: number) => Promise<boolean>;
  /**
   * Resolves true once every connected instance of the worker has
   * acknowledged `revision`, or false after `timeoutMs`.
   */
  waitForWorkerApplied?: (workerId: string, revision: number, timeoutMs: number) => Promise<boolean>;
}

/** Per-request state the middlewares fill in. */
export interface HttpState {
  requestId: string;
  /** The request's logger, carrying `request_id`. */
  log: Logger;
  /** Set by the auth middleware on endpoints that need a token. */
  principal?: Principal;
}

export type HttpContext = ParameterizedContext<HttpState>;
export type HttpRouterContext = RouterContext<HttpState>;
