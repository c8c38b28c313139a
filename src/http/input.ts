import * as v from 'valibot';
import {
  SessionIdSchema,
  UuidSchema,
  toValidationIssues,
  type ValidationIssue,
} from '../../proto/index.ts';
import { BadRequestError, NotFoundError, ValidationError } from '../errors.ts';
import type { HttpContext } from './context.ts';

// Checks of what arrives in paths, query strings, headers and bodies. Every
// endpoint validates its whole query string, so a query parameter it does not
// define is a 400 just like an unknown body field.

type Source = 'body' | 'query';

/** Validates the JSON body against a proto schema; a failure is a 400 listing each issue. */
export function parseBody<S extends v.GenericSchema>(
  ctx: HttpContext,
  schema: S,
): v.InferOutput<S> {
  return parseInput(schema, ctx.request.body, 'body');
}

/** Validates the query string; endpoints that take no parameters pass `NO_QUERY`. */
export function parseQuery<S extends v.GenericSchema>(
  ctx: HttpContext,
  schema: S,
): v.InferOutput<S> {
  return parseInput(schema, { ...ctx.query }, 'query');
}

export const NO_QUERY = v.strictObject({});

function parseInput<S extends v.GenericSchema>(
  schema: S,
  input: unknown,
  source: Source,
): v.InferOutput<S> {
  const result = v.safeParse(schema, input);
  if (result.success) return result.output;

  const issues = toValidationIssues(result.issues).map((issue) => explainUnknownKey(issue, source));
  const fields = [...new Set(issues.map((issue) => issue.path || `(${source})`))].join(', ');
  const where = source === 'body' ? 'request body' : 'query string';
  throw new ValidationError(
    `The ${where} is invalid at ${fields}; fix the listed issues and send it again.`,
    issues,
  );
}

/** Replaces valibot's "Expected never" wording for keys that a strict object rejects. */
function explainUnknownKey(issue: ValidationIssue, source: Source): ValidationIssue {
  if (issue.expected !== 'never') return issue;
  const noun = source === 'body' ? 'field' : 'query parameter';
  return { ...issue, message: `unknown ${noun} ${issue.path}; remove it` };
}

/**
 * Reads a uuid path parameter. Any other value cannot name a stored
 * resource, so it is a 404 like an unknown id.
 */
export function parseUuidParam(value: string, resource: 'route' | 'worker'): string {
  if (v.is(UuidSchema, value)) return value.toLowerCase();
  throw new NotFoundError(`No ${resource} has id "${preview(value)}"; ${resource} ids are uuids.`);
}

/** Reads a session id path parameter, already URL-decoded by the router; matched exactly. */
export function parseSessionParam(value: string): string {
  if (v.is(SessionIdSchema, value)) return value;
  throw new NotFoundError(
    `No session has id "${preview(value)}"; session ids are 1 to 128 characters, ` +
      'with no control characters.',
  );
}

function preview(value: string): string {
  return value.length <= 64 ? value : `${value.slice(0, 64)}…`;
}

/**
 * Reads `If-Match: "<revision>"`. Returns undefined when the header is absent
 * or `*`, which any stored route matches.
 */
export function parseIfMatch(ctx: HttpContext): number | undefined {
  const header = ctx.get('If-Match').trim();
  if (header === '' || header === '*') return undefined;
  const match = /^"(\d{1,15})"$/.exec(header);
  if (match) return Number(match[1]);
  throw new BadRequestError(
    'If-Match must be one entity tag of a route, its revision in quotes such as "42", ' +
      'as GET /routes/:id returns in ETag.',
  );
}

/** Formats the `ETag` of a route: its revision, which every change raises. */
export function routeEtag(revision: number): string {
  return `"${revision}"`;
}

/** Encodes an opaque cursor that resumes a listing after the route with `id`. */
export function encodeCursor(id: string): string {
  return Buffer.from(id, 'utf8').toString('base64url');
}

/** Decodes a cursor of `encodeCursor`; anything else is a 400. */
export function decodeCursor(cursor: string): string {
  const id = Buffer.from(cursor, 'base64url').toString('utf8');
  if (v.is(UuidSchema, id)) return id.toLowerCase();
  throw new ValidationError('The query string is invalid at cursor; fix the listed issues.', [
    { path: 'cursor', message: 'invalid cursor; pass next_cursor of the previous page unchanged' },
  ]);
}
