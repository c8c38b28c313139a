import type { ValidationIssue } from '../../proto/index.ts';

/** Base of the errors the worker agent and proxy report through their `error` events. */
export class WorkerError extends Error {
  /** Stable identifier of the failure, for logs and tests. */
  readonly code: string;

  constructor(code: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** `POST /workers/register` failed: the coordinator was unreachable or returned an error. */
export class RegistrationError extends WorkerError {
  /** HTTP status of the response, or undefined when no response arrived. */
  readonly status: number | undefined;

  constructor(url: string, status: number | undefined, detail: string, options?: ErrorOptions) {
    const outcome = status === undefined ? 'failed' : `returned ${status}`;
    super('registration_failed', `Registration at ${url} ${outcome}: ${detail}`, options);
    this.status = status;
  }

  /** Whether sending the same request again cannot succeed, because the body is invalid. */
  get isPermanent(): boolean {
    return this.status === 400;
  }
}

/** The WebSocket session failed: the upgrade was refused, or the connection broke. */
export class SessionError extends WorkerError {
  /** HTTP status of the rejected upgrade, or undefined when no response arrived. */
  readonly status: number | undefined;

  constructor(url: string, status: number | undefined, detail: string, options?: ErrorOptions) {
    const outcome = status === undefined ? 'failed' : `was refused with ${status}`;
    super('session_failed', `Session with ${url} ${outcome}: ${detail}`, options);
    this.status = status;
  }
}

/** An ignored coordinator message that is not JSON or does not match the schema. */
export class InvalidMessageError extends WorkerError {
  readonly issues: ValidationIssue[];

  constructor(detail: string, issues: ValidationIssue[] = [], options?: ErrorOptions) {
    super('invalid_message', `Ignored an invalid coordinator message: ${detail}`, options);
    this.issues = issues;
  }
}

/** An `error` message the coordinator sent about something this worker did. */
export class CoordinatorReportedError extends WorkerError {
  /** The coordinator's own code for the error. */
  readonly coordinatorCode: string;

  constructor(coordinatorCode: string, message: string) {
    super('coordinator_error', `Coordinator reported ${coordinatorCode}: ${message}`);
    this.coordinatorCode = coordinatorCode;
  }
}

/** The proxy could not listen on a port that a route needs. */
export class ListenError extends WorkerError {
  readonly port: number;

  constructor(host: string, port: number, options?: ErrorOptions) {
    const reason = options?.cause instanceof Error ? options.cause.message : 'unknown error';
    super('listen_failed', `Could not listen on ${host}:${port}: ${reason}`, options);
    this.port = port;
  }
}
