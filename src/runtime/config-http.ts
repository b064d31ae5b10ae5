import { envValue } from './config-env.js';
import { ConfigError } from './config-file.js';

/** The HTTP server's token (L2FLOW_API_TOKEN, read from the environment only: it is a secret) and its bind rule. */

/** The bearer token of the HTTP API's write endpoints; `name` is the audit actor of what it does. */
export interface ApiToken {
  name: string;
  secret: string;
}

const TOKEN_HELP = 'write L2FLOW_API_TOKEN=<name>:<secret> (the name is the audit actor), e.g. ops:$(openssl rand -hex 24)';

/**
 * L2FLOW_API_TOKEN, `name:secret` or a bare secret (named `api`). Its value is never quoted: it is a secret.
 * A server bound to anything but loopback (`http` given) must have one: its write endpoints would be open.
 */
export function httpToken(env: NodeJS.ProcessEnv, http: { enabled: boolean; host: string } | null): ApiToken | null {
  const text = envValue(env, 'L2FLOW_API_TOKEN');
  const named = text === undefined ? null : /^([A-Za-z0-9_.@-]{1,64}):(.+)$/.exec(text);
  const token = text === undefined ? null : named ? { name: named[1]!, secret: named[2]! } : { name: 'api', secret: text };
  if (token && token.secret.length < 16) throw new ConfigError('L2FLOW_API_TOKEN', `its secret is shorter than 16 characters: ${TOKEN_HELP}`);
  if (!token && http?.enabled && !isLoopback(http.host)) {
    throw new ConfigError('L2FLOW_API_TOKEN', `the HTTP server binds ${http.host} (http.host), not loopback, so its write endpoints need a token: ${TOKEN_HELP}, or bind 127.0.0.1`);
  }
  return token;
}

/** Addresses only this machine can reach. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
