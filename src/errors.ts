import type { ValidationIssue } from '../proto/index.ts';

/** Base of every error the coordinator reports to a client. */
export class AppError extends Error {
  readonly code: string;
  readonly status: number;
  readonly title: string;

  constructor(code: string, status: number, title: string, detail: string, options?: ErrorOptions) {
    super(detail, options);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.title = title;
  }

  /** Extra members of the problem+json body. */
  extensions(): Record<string, unknown> {
    return {};
  }
}

export class ValidationError extends AppError {
  readonly issues: ValidationIssue[];

  constructor(detail: string, issues: ValidationIssue[]) {
    super('invalid_request', 400, 'Invalid request', detail);
    this.issues = issues;
  }

  override extensions(): Record<string, unknown> {
    return { issues: this.issues };
  }
}

export class BadRequestError extends AppError {
  constructor(detail: string) {
    super('bad_request', 400, 'Bad request', detail);
  }
}

export class UnauthorizedError extends AppError {
  constructor(detail: string) {
    super('unauthorized', 401, 'Unauthorized', detail);
  }
}

export class ForbiddenError extends AppError {
  constructor(detail: string) {
    super('forbidden', 403, 'Forbidden', detail);
  }
}

export class NotFoundError extends AppError {
  constructor(detail: string) {
    super('not_found', 404, 'Not found', detail);
  }
}

export class ConflictError extends AppError {
  readonly conflictingRouteId: string | undefined;

  constructor(detail: string, conflictingRouteId?: string) {
    super('conflict', 409, 'Conflict', detail);
    this.conflictingRouteId = conflictingRouteId;
  }

  override extensions(): Record<string, unknown> {
    if (this.conflictingRouteId === undefined) return {};
    return { conflicting_route_id: this.conflictingRouteId };
  }
}

/** A `since` older than the change log keeps. */
export class CompactedError extends AppError {
  readonly oldestRevision: number;

  constructor(since: number, oldestRevision: number) {
    super(
      'compacted',
      410,
      'Gone',
      `Revision ${since} is older than the change log keeps; the oldest event kept is ` +
        `revision ${oldestRevision}. Read the current state with GET /routes instead.`,
    );
    this.oldestRevision = oldestRevision;
  }

  override extensions(): Record<string, unknown> {
    return { oldest_revision: this.oldestRevision };
  }
}

export class PreconditionFailedError extends AppError {
  constructor(detail: string) {
    super('precondition_failed', 412, 'Precondition failed', detail);
  }
}

export class PayloadTooLargeError extends AppError {
  constructor(detail: string) {
    super('payload_too_large', 413, 'Payload too large', detail);
  }
}

export class UnsupportedMediaTypeError extends AppError {
  constructor(detail: string) {
    super('unsupported_media_type', 415, 'Unsupported media type', detail);
  }
}

/** No live worker can take a route. */
export class NoWorkerError extends AppError {
  constructor(detail: string) {
    super('no_worker', 503, 'No worker available', detail);
  }
}

export class DatabaseUnavailableError extends AppError {
  constructor(options?: ErrorOptions) {
    super(
      'database_unavailable',
      503,
      'Database unavailable',
      'The database did not answer in time, so the request may not have taken effect. ' +
        'Retry it: creating a route with the same spec returns the existing one.',
      options,
    );
  }
}
