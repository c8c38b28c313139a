import type { Middleware, Next } from 'koa';
import type { Principal } from '../coordinator/tokens.ts';
import { ForbiddenError, UnauthorizedError } from '../errors.ts';
import type { HttpContext, HttpDeps, HttpState } from './context.ts';

export type PrincipalKind = Principal['kind'];

const BEARER = /^Bearer[ \t]+([^\s]+)[ \t]*$/i;

/**
 * Lets a request through only with a bearer token of one of `kinds`: no or an
 * unknown token is a 401, a token of another kind a 403. Messages name token
 * kinds, never a token.
 */
export function requireToken(
  auth: HttpDeps['auth'],
  kinds: readonly PrincipalKind[],
): Middleware<HttpState> {
  return async (ctx: HttpContext, next: Next) => {
    const token = readBearerToken(ctx);
    const principal = await auth.identify(token);
    if (principal === null) {
      ctx.set('WWW-Authenticate', 'Bearer error="invalid_token"');
      throw new UnauthorizedError(
        'The bearer token is unknown or revoked; use a current token of the coordinator.',
      );
    }
    if (!kinds.includes(principal.kind)) {
      throw new ForbiddenError(
        `${ctx.method} ${ctx.path} needs a ${describeKinds(kinds)}; ` +
          `the request used a ${principal.kind} token.`,
      );
    }
    ctx.state.principal = principal;
    await next();
  };
}

function readBearerToken(ctx: HttpContext): string {
  const header = ctx.get('Authorization');
  const match = BEARER.exec(header);
  if (match) return match[1];

  ctx.set('WWW-Authenticate', 'Bearer');
  if (header === '') {
    throw new UnauthorizedError(
      'Missing Authorization header; send `Authorization: Bearer <token>`.',
    );
  }
  throw new UnauthorizedError(
    'The Authorization header is not a bearer token; send `Authorization: Bearer <token>`.',
  );
}

function describeKinds(kinds: readonly PrincipalKind[]): string {
  const names = kinds.map((kind) => (kind === 'session' ? "worker's session" : kind));
  if (names.length === 1) return `${names[0]} token`;
  return `${names.slice(0, -1).join(', ')} or ${names[names.length - 1]} token`;
}
