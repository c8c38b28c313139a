import type { Route, WorkerStatus } from './rest.ts';

// Frames of the live event stream (`GET /events/stream`) and items of `GET /events`.

export const EVENT_TYPES = [
  'route.created',
  'route.updated',
  'route.deleted',
  'route.moved',
  'worker.registered',
  'worker.connected',
  'worker.disconnected',
  'worker.lost',
  'worker.recovered',
  'worker.deregistered',
] as const;

export type EventType = (typeof EVENT_TYPES)[number];

export type DeleteReason = 'api' | 'session_ended' | 'idle';

/** The place a moved route was served at before the move. */
export interface PreviousPlacement {
  worker_id: string;
  port?: number;
  subdomain?: string;
  url: string;
}

/** A worker as named in a worker event. */
export interface WorkerEventSubject {
  id: string;
  authority: string;
  status: WorkerStatus;
  generation: number;
  instance_id?: string;
}

export interface RouteEvent {
  revision: number;
  type: EventType;
  at: string;
  route?: Route;
  worker?: WorkerEventSubject;
  previous?: PreviousPlacement;
  reason?: string;
}
