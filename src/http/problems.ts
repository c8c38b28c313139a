import type { Next } from 'koa';
import type { Problem } from '../../proto/index.ts';
import {
  AppError,
  BadRequestError,
  NotFoundError,
  PayloadTooLargeError,
  UnsupportedMediaTypeError,
} from '../errors.ts';
import { toAppError } from '../store/writer.ts';
import type { HttpContext } from './context.ts';

/**
 * Base of every problem `type`. The URIs only identify the kind of error
 * (RFC 9457 section 3.1.1); nothing is served at them.
 */
const PROBLEM_TYPE_BASE = 'https://appproxy.dev/problems/';

/** Converts every error thrown below it into an `application/problem+json` response. */
export async function answerProblems(ctx: HttpContext, next: Next): Promise<void> {
  try {
    await next();
  } catch (thrown) {
    const error = toClientError(thrown);
    logFailure(ctx, error, thrown);
    if (error?.status === 413) discardRequestBody(ctx);
    writeProblem(ctx, error);
  }
}

/** Maps what a handler threw to the error sent to the client; null means a 500. */
function toClientError(thrown: unknown): AppError | null {
  const mapped = toAppError(thrown);
  if (mapped instanceof AppError) return mapped;
  return fromHttpError(thrown);
}

/**
 * Maps the http-errors that koa-bodyparser (through co-body and raw-body)
 * throws. Their messages are replaced, because a JSON parse message may
 * quote part of the body.
 */
function fromHttpError(thrown: unknown): AppError | null {
  const { status, type } = thrown as { status?: unknown; type?: unknown };
  if (status === 413) {
    return new PayloadTooLargeError(
      'The request body is larger than 1 MiB (1,048,576 bytes); send a smaller body.',
    );
  }
  if (status === 415) {
    return new UnsupportedMediaTypeError(
      'The request body uses a charset or content encoding the coordinator cannot read; ' +
        'send UTF-8 JSON, optionally gzip- or deflate-encoded.',
    );
  }
  if (type === 'entity.parse.failed') {
    return new BadRequestError('The request body is not valid JSON; send one JSON object.');
  }
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new BadRequestError('The request body could not be read; send it again.');
  }
  return null;
}

function logFailure(ctx: HttpContext, error: AppError | null, thrown: unknown): void {
  const fields = { method: ctx.method, path: ctx.path, err: thrown };
  if (error === null) {
    ctx.state.log.error(fields, 'request failed');
    return;
  }
  if (error.status >= 500) {
    ctx.state.log.warn({ ...fields, code: error.code }, error.message);
    return;
  }
  ctx.state.log.debug({ method: ctx.method, path: ctx.path, code: error.code }, error.message);
}

function writeProblem(ctx: HttpContext, error: AppError | null): void {
  const problem = error === null ? internalProblem(ctx.state.requestId) : toProblem(ctx, error);
  ctx.status = problem.status;
  ctx.body = problem;
  // Set after the body, because assigning an object body sets the type to JSON.
  ctx.type = 'application/problem+json';
}

function toProblem(ctx: HttpContext, error: AppError): Problem {
  return {
    type: `${PROBLEM_TYPE_BASE}${error.code}`,
    title: error.title,
    status: error.status,
    detail: error.message,
    request_id: ctx.state.requestId,
    ...error.extensions(),
  };
}

/** Builds a 500 that contains only the request id; the full error is logged under that id. */
function internalProblem(requestId: string): Problem {
  return {
    type: `${PROBLEM_TYPE_BASE}internal_error`,
    title: 'Internal server error',
    status: 500,
    detail:
      'The coordinator failed to handle the request; its log has the error under ' +
      `request id ${requestId}.`,
    request_id: requestId,
  };
}

/**
 * Drops the rest of a body rejected as too large while the response is sent,
 * and closes the connection after it. Without this the client may still be
 * writing when the socket closes, and gets a connection reset instead of the 413.
 */
function discardRequestBody(ctx: HttpContext): void {
  ctx.set('Connection', 'close');
  if (!ctx.req.complete) ctx.req.resume();
}

/** Rejects requests that no endpoint handled: unknown paths and methods. */
export async function rejectUnmatched(ctx: HttpContext, next: Next): Promise<void> {
  await next();
  if (ctx.body !== undefined && ctx.body !== null) return;
  if (ctx.status === 404) {
    throw new NotFoundError(`No endpoint ${ctx.method} ${ctx.path}; GET /openapi.json lists them.`);
  }
  if (ctx.status === 405) {
    const allowed = ctx.response.get('Allow');
    throw new AppError(
      'method_not_allowed',
      405,
      'Method not allowed',
      `${ctx.path} does not accept ${ctx.method}; it accepts ${allowed}.`,
    );
  }
  if (ctx.status === 501) {
    throw new AppError(
      'not_implemented',
      501,
      'Not implemented',
      `The coordinator does not implement method ${ctx.method}.`,
    );
  }
}
