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

const FORM = 'write it as https://user:password@host/path, or https://host/path?token=<token>';

/**
 * Hide the user-info and the query of a URI that may not even parse, so an error can quote it. Everything up
 * to the last `@` goes, because an unencoded password may itself contain `@`, `/`, `?` or `#`.
 */
export function maskUri(uri: string): string {
  const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:(\/\/)?/.exec(uri)?.[0] ?? '';
  const at = uri.lastIndexOf('@');
  const rest = at >= 0 ? `***${uri.slice(at)}` : uri.slice(scheme.length);
  return `${scheme}${rest.replace(/[?#].*$/s, (m) => `${m[0]}***`)}`;
}

function invalid(uri: string, what: string): Error {
  return new Error(`SAP connection URI "${maskUri(uri)}" ${what}: ${FORM}`);
}

function decode(part: string, uri: string, what: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw invalid(uri, `has a badly percent-encoded ${what}`);
  }
}

function tokenFromExtra(extra: string, uri: string): string | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(extra);
  } catch {
    // The JSON itself may hold the token, so neither it nor the parser's message (which quotes it) is shown.
    throw invalid(uri, 'has an __extra__ parameter that is not valid JSON (expected {"token": "..."})');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw invalid(uri, 'has an __extra__ parameter that is not a JSON object (expected {"token": "..."})');
  }
  const token = (parsed as Record<string, unknown>).token;
  if (token === undefined) return undefined;
  if (typeof token !== 'string') throw invalid(uri, 'has a non-string "token" in __extra__');
  return token;
}

/** Parse an Airflow connection URI (`AIRFLOW_CONN_SAP_CONN_ID`) into a secret-free URL and its authentication. */
export function parseSapConnection(uri: string): SapEndpoint {
  if (!/^[A-Za-z][A-Za-z0-9+.-]*:\/\//.test(uri.trim())) {
    // Without a scheme nothing tells where a secret starts, so the value is not quoted at all.
    throw new Error(`SAP connection URI is not a URL (it must start with https:// or http://): ${FORM}`);
  }
  let url: URL;
  try {
    url = new URL(uri.trim());
  } catch {
    // Not chained as `cause`: Node's TypeError carries the whole input, password included.
    throw invalid(uri, 'is not a valid URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw invalid(uri, `uses scheme "${url.protocol.replace(/:$/, '')}"; SAP is reached over http or https only`);
  }
  if (!url.hostname) throw invalid(uri, 'has no host');

  const queryToken = url.searchParams.get('token');
  const extra = url.searchParams.get('__extra__');
  const extraToken = extra === null ? undefined : tokenFromExtra(extra, uri);
  const token = queryToken ?? extraToken;
  const username = decode(url.username, uri, 'user name');
  const password = decode(url.password, uri, 'password');

  url.searchParams.delete('token');
  url.searchParams.delete('__extra__');
  url.username = '';
  url.password = '';
  url.hash = '';

  let auth: SapAuth;
  if (token !== undefined) {
    if (token.trim() === '') throw invalid(uri, 'has an empty token');
    auth = { kind: 'bearer', token };
  } else if (username !== '' || password !== '') {
    auth = { kind: 'basic', username, password };
  } else {
    auth = { kind: 'none' };
  }
  return { url: url.toString(), auth };
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
 * Remove the endpoint's credentials, in every form they travel (as written, percent-encoded, the Basic header's
 * base64), from text that came back from SAP: an error body may echo the Authorization header or the token.
 */
export function credentialScrubber(auth: SapAuth): (text: string) => string {
  const raw = auth.kind === 'bearer' ? [auth.token] : auth.kind === 'basic' ? [auth.password] : [];
  const header = authorizationHeader(auth)?.replace(/^\S+\s+/, '');
  // Very short values would blank out ordinary text; the logger applies the same floor.
  const forms = [...new Set([...raw, ...raw.map(encodeURIComponent), ...(header ? [header] : [])])]
    .filter((f) => f.length >= 3)
    .sort((a, b) => b.length - a.length);
  return (text) => forms.reduce((acc, f) => acc.split(f).join('***'), text);
}

/** The value of the Authorization header, or undefined when the endpoint has no authentication. */
export function authorizationHeader(auth: SapAuth): string | undefined {
  if (auth.kind === 'bearer') return `Bearer ${auth.token}`;
  if (auth.kind === 'basic') return `Basic ${Buffer.from(`${auth.username}:${auth.password}`, 'utf8').toString('base64')}`;
  return undefined;
}
