import type { Middleware, Next } from 'koa';
import bodyParser from 'koa-bodyparser';
import { isStorableText } from '../../proto/index.ts';
import { BadRequestError, UnsupportedMediaTypeError } from '../errors.ts';
import type { HttpContext, HttpState } from './context.ts';

/** Largest request body accepted; a larger one gets 413. */
export const MAX_BODY_BYTES = 1024 * 1024;

const parseJson = bodyParser({
  enableTypes: ['json'],
  jsonLimit: String(MAX_BODY_BYTES),
  // Only an object or an array at the top; a bare string or number is a 400.
  strict: true,
});

/**
 * Reads a JSON request body into `ctx.request.body`. A request without a body
 * reads as `{}`, so validation names each missing field. koa-bodyparser alone
 * would read a body of another type as `{}` too, so the type is checked here
 * first: anything but `application/json` is a 415.
 */
export const readJsonBody: Middleware<HttpState> = async (ctx: HttpContext, next: Next) => {
  if (!hasBody(ctx)) {
    ctx.request.body = {};
    return next();
  }
  const encoding = ctx.get('Content-Encoding').toLowerCase();
  if (encoding !== '' && encoding !== 'identity') {
    throw new UnsupportedMediaTypeError(
      `Compressed request bodies are not accepted (Content-Encoding: ${encoding.slice(0, 40)}); ` +
        'send the JSON uncompressed.',
    );
  }
  if (ctx.request.type.toLowerCase() !== 'application/json') {
    const received = ctx.request.type === '' ? 'no Content-Type' : `"${ctx.request.type}"`;
    throw new UnsupportedMediaTypeError(
      `The request body must be application/json, not ${received}; ` +
        'send it with `Content-Type: application/json`.',
    );
  }
  return parseJson(ctx, () => {
    checkBody(ctx.request.body);
    return next();
  });
};

/**
 * Rejects a body that is not a JSON object, or that contains text PostgreSQL
 * cannot store: a NUL character or half of a UTF-16 surrogate pair.
 */
function checkBody(body: unknown): void {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new BadRequestError('The request body must be a JSON object.');
  }
  const path = findUnstorableText(body, []);
  if (path !== null) {
    throw new BadRequestError(
      `The text at ${path.join('.') || 'the top level'} contains a NUL character or an ` +
        'unpaired surrogate; remove it.',
    );
  }
}

/** Returns the path of the first key or string with unstorable text, or null. */
function findUnstorableText(value: unknown, path: string[]): string[] | null {
  if (typeof value === 'string') return isStorableText(value) ? null : path;
  if (typeof value !== 'object' || value === null) return null;
  for (const [key, item] of Object.entries(value)) {
    if (!isStorableText(key)) return [...path, '(key)'];
    const found = findUnstorableText(item, [...path, key]);
    if (found) return found;
  }
  return null;
}

function hasBody(ctx: HttpContext): boolean {
  if (ctx.get('Transfer-Encoding') !== '') return true;
  return (ctx.request.length ?? 0) > 0;
}
