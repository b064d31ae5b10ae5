import { authorizationValue, authSecrets, parseConnection, redactor, type ConnectionAuth } from '../../lib/connection.js';

/** How l2flow authenticates to SAP: a bearer token, basic credentials, or nothing. */
export type SapAuth =
  | { kind: 'bearer'; token: string }
  | { kind: 'basic'; username: string; password: string }
  | { kind: 'none' };

/** The SAP endpoint resolved from an Airflow-style connection URI; `url` carries no secret. */
export interface SapEndpoint {
  url: string;
  auth: SapAuth;
}

function connectionAuth(auth: SapAuth): ConnectionAuth {
  if (auth.kind === 'bearer') return { type: 'bearer', token: auth.token };
  if (auth.kind === 'basic') return { type: 'basic', user: auth.username, password: auth.password };
  return { type: 'none' };
}

/** Parse an Airflow connection URI (`AIRFLOW_CONN_SAP_CONN_ID`) into a secret-free URL and its authentication. */
export function parseSapConnection(uri: string): SapEndpoint {
  const { url, auth } = parseConnection(uri, 'sap');
  if (auth.type === 'bearer') return { url, auth: { kind: 'bearer', token: auth.token } };
  if (auth.type === 'basic') return { url, auth: { kind: 'basic', username: auth.user, password: auth.password } };
  return { url, auth: { kind: 'none' } };
}

/** The endpoint's origin and path only: other query parameters may be API keys too. */
export function sapUrlForHumans(ep: SapEndpoint): string {
  const u = new URL(ep.url);
  return `${u.origin}${u.pathname}`;
}

/** A secret-free one-line description of the endpoint, for logs and error messages. */
export function describeSapEndpoint(ep: SapEndpoint): string {
  const auth =
    ep.auth.kind === 'bearer' ? 'bearer token' : ep.auth.kind === 'basic' ? `basic as "${ep.auth.username}"` : 'no authentication';
  return `${sapUrlForHumans(ep)} (${auth})`;
}

/**
 * Remove the endpoint's credentials, in every form they travel, from text that came back from SAP: an error body
 * may echo the Authorization header or the token. The connection parser's rule, applied to this endpoint's auth.
 */
export function credentialScrubber(auth: SapAuth): (text: string) => string {
  return redactor(authSecrets(connectionAuth(auth)));
}

/** The value of the Authorization header, or undefined when the endpoint has no authentication. */
export function authorizationHeader(auth: SapAuth): string | undefined {
  return authorizationValue(connectionAuth(auth));
}
