/**
 * The one parser of connection URIs (postgres, SAP and Airflow over http(s), smtp): what to connect to, how to authenticate,
 * how to show the URI to a human, and which secrets to remove from anything that leaves the process. Every other
 * module's masking and scrubbing comes from here, so a secret is found by one rule.
 */

export type ConnectionKind = 'postgres' | 'sap' | 'smtp' | 'airflow';

/** How a connection authenticates; `basic` also covers a database or SMTP user and password. */
export type ConnectionAuth = { type: 'bearer'; token: string } | { type: 'basic'; user: string; password: string } | { type: 'none' };

export interface ParsedConnection {
  kind: ConnectionKind;
  /** The URI without its credentials: no user info, no `__extra__` (nor, for SAP and Airflow, `token`) parameter, no fragment. */
  url: string;
  auth: ConnectionAuth;
  /** The URI as a human may see it: the password and every secret-named parameter replaced by ***. */
  display: string;
  /** Every secret, in every form it can travel (as written, percent-decoded and -encoded, base64 on the wire). */
  secrets: string[];
  /** Airflow's `__extra__` JSON object ({} when absent). */
  extra: Record<string, unknown>;
}

interface KindRules {
  label: string;
  schemes: string[];
  names: string;
  /** A full example, for "export X=…" hints. */
  example: string;
  help: string;
  /** Tokens (`?token=`, `__extra__.token`) authenticate this kind. */
  tokens: boolean;
  pathAllowed: boolean;
}

/** What each kind accepts, and how to tell an operator to write it. */
export const CONNECTION_KINDS: Record<ConnectionKind, KindRules> = {
  postgres: {
    label: 'PostgreSQL connection URI',
    schemes: ['postgres', 'postgresql'],
    names: 'postgres or postgresql',
    example: 'postgres://user:password@host:5432/dwh',
    help: 'write it like postgres://user:password@host:5432/dwh',
    tokens: false,
    pathAllowed: true,
  },
  sap: {
    label: 'SAP connection URI',
    schemes: ['https', 'http'],
    names: 'http or https',
    example: 'https://user:password@sap.example/readiness',
    help: 'write it as https://user:password@host/path, or https://host/path?token=<token>',
    tokens: true,
    pathAllowed: true,
  },
  smtp: {
    label: 'SMTP connection URI',
    schemes: ['smtp', 'smtps'],
    names: 'smtp or smtps',
    example: 'smtp://user:password@mail.example:587',
    help: 'write it as smtp://user:password@host:587 or smtps://user:password@host:465 (percent-encode special characters)',
    tokens: false,
    pathAllowed: false,
  },
  airflow: {
    label: 'Airflow connection URI',
    schemes: ['http', 'https'],
    names: 'http or https',
    example: 'http://user:password@airflow.bank.example:8080/?api_version=2',
    help: 'write it as http://user:password@host:8080/ (Airflow 2: basic auth; Airflow 3: the user and password get a token), adding ?api_version=1 or 2 or a path ending in /api/v1 or /api/v2 unless the child sets apiVersion (percent-encode special characters)',
    tokens: true,
    pathAllowed: true,
  },
};

/** A connection URI that cannot be used; the message never quotes the URI, which may hold a secret. */
export class ConnectionError extends Error {
  override readonly name = 'ConnectionError';
  constructor(
    readonly kind: ConnectionKind,
    /** What is wrong, phrased to follow the URI's name: `has no host`. */
    readonly problem: string,
    /** How to write it instead. */
    readonly help: string,
  ) {
    super(`${CONNECTION_KINDS[kind].label} ${problem}: ${help}`);
  }
}

/** Query parameters (and `__extra__` keys) whose values are secrets. */
const SECRET_KEY = /token|password|passwd|secret|key|__extra__/i;
/** Shorter values would blank out ordinary text when scrubbed. */
const MIN_SECRET_LENGTH = 3;
const MASK = '***';

function percentDecode(part: string): string | undefined {
  try {
    return decodeURIComponent(part);
  } catch {
    return undefined;
  }
}

function base64(s: string): string {
  return Buffer.from(s, 'utf8').toString('base64');
}

/** The forms a credential takes on the wire: as is, percent-encoded, and in HTTP Basic or SMTP PLAIN/LOGIN base64. */
export function authSecrets(auth: ConnectionAuth): string[] {
  if (auth.type === 'bearer') return [auth.token, encodeURIComponent(auth.token)];
  if (auth.type === 'none' || auth.password === '') return [];
  const { user, password } = auth;
  return [password, encodeURIComponent(password), base64(`${user}:${password}`), base64(password), base64(`\0${user}\0${password}`), base64(`${user}\0${user}\0${password}`)];
}

/** The value of an HTTP Authorization header for `auth`, or undefined when it has no credentials. */
export function authorizationValue(auth: ConnectionAuth): string | undefined {
  if (auth.type === 'bearer') return `Bearer ${auth.token}`;
  if (auth.type === 'basic') return `Basic ${base64(`${auth.user}:${auth.password}`)}`;
  return undefined;
}

/** The secret values written in a parsed URI: the password, secret-named parameters and secret keys of `__extra__`. */
function uriSecrets(url: URL): string[] {
  const out: string[] = [];
  if (url.password) out.push(url.password, percentDecode(url.password) ?? '');
  for (const [key, value] of url.searchParams) {
    if (!SECRET_KEY.test(key) || !value) continue;
    out.push(value, encodeURIComponent(value));
    if (key !== '__extra__') continue;
    try {
      for (const [k, v] of Object.entries(JSON.parse(value) as Record<string, unknown>)) {
        if (SECRET_KEY.test(k) && typeof v === 'string') out.push(v, encodeURIComponent(v));
      }
    } catch {
      // not JSON: the whole value is already collected
    }
  }
  return out;
}

function unique(secrets: string[]): string[] {
  return [...new Set(secrets.filter((s) => s.length >= MIN_SECRET_LENGTH))].sort((a, b) => b.length - a.length);
}

function displayOf(url: URL): string {
  const shown = new URL(url.href);
  if (shown.password) shown.password = MASK;
  for (const key of [...shown.searchParams.keys()]) if (SECRET_KEY.test(key)) shown.searchParams.set(key, MASK);
  shown.hash = '';
  return shown.toString();
}

/** A URI with its secrets masked, of any kind; `(unparseable URI)` when it does not parse (it is then not quoted at all). */
export function displayUri(uri: string): string {
  try {
    return displayOf(new URL(uri.trim()));
  } catch {
    return '(unparseable URI)';
  }
}

/** The secrets of a URI of any kind, for redaction; [] when it does not parse (config validation rejects it). */
export function secretsOfUri(uri: string): string[] {
  let url: URL;
  try {
    url = new URL(uri.trim());
  } catch {
    return [];
  }
  const user = percentDecode(url.username) ?? url.username;
  const password = percentDecode(url.password) ?? url.password;
  return unique([...uriSecrets(url), ...authSecrets({ type: 'basic', user, password })]);
}

/** Replace every secret (longest first, so a secret containing another goes whole) by ***. */
export function redactor(secrets: string[]): (text: string) => string {
  const forms = unique(secrets);
  return (text) => forms.reduce((acc, f) => acc.split(f).join(MASK), text);
}

function extraOf(value: string | null, fail: (problem: string) => never): Record<string, unknown> {
  if (value === null) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    // The JSON may hold a token, so neither it nor the JSON parser's message (which quotes it) is shown.
    return fail('has an __extra__ parameter that is not valid JSON (expected {"token": "..."})');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    return fail('has an __extra__ parameter that is not a JSON object (expected {"token": "..."})');
  }
  return parsed as Record<string, unknown>;
}

/** Parse a connection URI of `kind`; throws ConnectionError (which never quotes the URI) when it cannot be used. */
export function parseConnection(uri: string, kind: ConnectionKind): ParsedConnection {
  const rules = CONNECTION_KINDS[kind];
  const fail = (problem: string): never => {
    throw new ConnectionError(kind, problem, rules.help);
  };
  const text = uri.trim();
  const starts = rules.schemes.map((s) => `${s}://`).join(' or ');
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(text)?.[1]?.toLowerCase();
  // Without a scheme nothing tells where a secret starts, so nothing of the value is quoted.
  if (!scheme) fail(`is not a URI (not a valid URL; it must start with ${starts})`);
  if (!rules.schemes.includes(scheme!)) {
    const s = scheme!.slice(0, 20);
    fail(`has scheme "${s}" but must use ${rules.names} (replace scheme "${s}:" with "${rules.schemes[0]}:")`);
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    // Not chained as `cause`: URL's TypeError carries the whole input, password included.
    return fail('is not a valid URI (not a valid URL: check the port, and percent-encode special characters in the password, e.g. @ as %40)');
  }
  if (!url.hostname.replace(/^\[(.*)\]$/, '$1') && !(kind === 'postgres' && url.searchParams.get('host'))) fail('has no host');
  if (!rules.pathAllowed && url.pathname !== '' && url.pathname !== '/') fail('must not have a path');
  const user = percentDecode(url.username) ?? fail('has a badly percent-encoded user name: the user name is not valid percent-encoding (write % as %25)');
  const password =
    percentDecode(url.password) ?? fail('has a badly percent-encoded password: the password is not valid percent-encoding (write % as %25)');
  const extra = extraOf(url.searchParams.get('__extra__'), fail);

  let auth: ConnectionAuth = user !== '' || password !== '' ? { type: 'basic', user, password } : { type: 'none' };
  if (rules.tokens) {
    const token = url.searchParams.get('token') ?? extra.token;
    if (token !== undefined && typeof token !== 'string') fail('has a non-string "token" in __extra__');
    if (typeof token === 'string') {
      if (token.trim() === '') fail('has an empty token');
      auth = { type: 'bearer', token };
    }
  }
  const secrets = unique([...uriSecrets(url), ...authSecrets(auth)]);
  const display = displayOf(url);
  if (rules.tokens) url.searchParams.delete('token');
  url.searchParams.delete('__extra__');
  url.username = '';
  url.password = '';
  url.hash = '';
  return { kind, url: url.toString(), auth, display, secrets, extra };
}
