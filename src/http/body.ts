import type { Middleware, Next } from 'koa';
import bodyParser from 'koa-bodyparser';
import { UnsupportedMediaTypeError } from '../errors.ts';
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
  if (ctx.request.type !== 'application/json') {
    const received = ctx.request.type === '' ? 'no Content-Type' : `"${ctx.request.type}"`;
    throw new UnsupportedMediaTypeError(
      `The request body must be application/json, not ${received}; ` +
        'send it with `Content-Type: application/json`.',
    );
  }
  return parseJson(ctx, next);
};

function hasBody(ctx: HttpContext): boolean {
  if (ctx.get('Transfer-Encoding') !== '') return true;
  return (ctx.request.length ?? 0) > 0;
}
