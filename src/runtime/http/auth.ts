import { createHash, timingSafeEqual } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import type { ApiToken } from '../config.js';
import { HttpError } from './respond.js';

/** Who a write request acts as, for l2flow.audit: the token's name, or `http` when no token is configured (loopback). */
export type AuthEnv = { Variables: { actor: string } };

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Write endpoints: with a token configured, only `Authorization: Bearer <secret>` passes (compared in constant time). */
export function requireToken(token: ApiToken | null): MiddlewareHandler<AuthEnv> {
  const expected = token && digest(token.secret);
  return async (c, next) => {
    if (token && expected) {
      const given = /^Bearer\s+(.+)$/i.exec(c.req.header('authorization') ?? '')?.[1]?.trim();
      if (!given || !timingSafeEqual(digest(given), expected)) {
        c.header('www-authenticate', 'Bearer realm="l2flow"');
        throw new HttpError(401, 'UNAUTHORIZED', 'authorization: send the API token as "Authorization: Bearer <secret>" (L2FLOW_API_TOKEN)', 'authorization');
      }
    }
    c.set('actor', token?.name ?? 'http');
    await next();
  };
}
