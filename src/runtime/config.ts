import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { WORKFLOW_ID } from '../machines/workflow.js';
import type { ChildConfig } from '../services/children.js';
import { isIsoDate } from '../services/dates.js';
import { parseSmtpConnection } from '../services/mailer.js';
import { parseSapConnection } from '../services/sap-connection.js';

export type { ChildConfig };

/**
 * Configuration, read once at start-up and validated. This is the only module that reads `process.env`.
 * Sources, strongest first: environment variables, the optional L2FLOW_CONFIG file (YAML or JSON), defaults.
 */

/** A setting an operator must fix; `key` names it as the operator writes it. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly key: string,
    readonly problem: string,
    /** The file the key was read from, when it came from L2FLOW_CONFIG. */
    readonly source?: string,
  ) {
    super(`configuration error: ${key}${source ? ` (in ${source})` : ''}: ${problem}`);
  }
}

const DAY_S = 24 * 3600;

/** Longest delay a Node timer takes; setTimeout/setInterval fire at once for anything longer. */
const MAX_TIMER_MS = 2_147_483_647;

/** A positive number of `what`; `timer` caps it at the longest delay a Node timer takes (for values that end up in one). */
const positive = (what: 'seconds' | 'milliseconds', opts: { timer?: boolean } = {}) => {
  const n = z.number().positive({
    error: `must be greater than 0 ${what}`,
  });
  if (!opts.timer) return n;
  const max = what === 'seconds' ? Math.floor(MAX_TIMER_MS / 1000) : MAX_TIMER_MS;
  return n.max(max, { error: `must be at most ${max} ${what} (about 24 days, the longest timer Node.js supports)` });
};

/** `$n` placeholders a statement references (a heuristic that also counts `$n` inside literals). */
function paramsReferenced(statement: string): number[] {
  return [...new Set([...statement.matchAll(/\$(\d+)(?!\d)/g)].map((m) => Number(m[1])))];
}

const childSchema = z.discriminatedUnion(
  'kind',
  [
    z.strictObject({
      kind: z.literal('sql'),
      statement: z
        .string({ error: 'must be a SQL statement, e.g. "call l2.my_proc($1::date, $2::bigint)"' })
        .trim()
        .min(1, { error: 'must be a SQL statement, e.g. "call l2.my_proc($1::date, $2::bigint)"' })
        .refine((st) => paramsReferenced(st).every((n) => n >= 1 && n <= 2), {
          error: 'may reference only $1 (the logical date) and $2 (the load id): remove the other $n placeholders',
        }),
      timeoutSeconds: positive('seconds', { timer: true }).optional(),
      transactional: z.boolean({ error: 'must be true or false' }).optional(),
    }),
    z.strictObject({
      kind: z.literal('builtin'),
      name: z.literal('sys_kill_all_session_pg', { error: 'must be sys_kill_all_session_pg, the only builtin child' }),
      idleSeconds: z.number({ error: 'must be a whole number of seconds, e.g. 300' }).int({ error: 'must be a whole number of seconds, e.g. 300' }).nonnegative({ error: 'must be 0 or more seconds' }).optional(),
      timeoutSeconds: positive('seconds', { timer: true }).optional(),
    }),
  ],
  {
    error: (iss) =>
      `${iss.input && typeof iss.input === 'object' && 'kind' in iss.input ? `unknown child kind ${quote((iss.input as { kind: unknown }).kind)}` : 'kind is missing'}: write kind: sql (with statement: "call ...", run in the warehouse) or kind: builtin (with name: sys_kill_all_session_pg)`,
  },
);

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const fileSchema = z.strictObject({
  workflow: z
    .strictObject({
      timezone: z.string().optional(),
      startDate: z.string().optional(),
      maxActiveRuns: z.number().int().positive().optional(),
      claimIntervalSeconds: z.number().positive().max(3600).optional(),
      runTimeoutSeconds: z.number().positive().max(MAX_TIMER_MS / 1000).optional(),
    })
    .optional(),
  connections: z.record(z.string(), z.string()).optional(),
  email: z.strictObject({ recipients: z.array(z.string()).optional(), from: z.string().optional() }).optional(),
  sensors: z
    .strictObject({
      wait_for_l2_full_load: z
        .strictObject({
          flagTable: z.string().optional(),
          flagCode: z.string().min(1).optional(),
          pokeIntervalSeconds: positive('seconds', { timer: true }).optional(),
          timeoutSeconds: positive('seconds').optional(),
        })
        .optional(),
      wait_for_success_end: z
        .strictObject({
          pokeIntervalSeconds: positive('seconds', { timer: true }).optional(),
          timeoutSeconds: positive('seconds').optional(),
          executionDeltaDays: z.number().int().positive().optional(),
        })
        .optional(),
    })
    .optional(),
  children: z.record(z.string(), childSchema).optional(),
  pools: z.record(z.string(), z.strictObject({ slots: z.number().int().positive() })).optional(),
  sap: z
    .strictObject({
      viewName: z.string().optional(),
      connectTimeoutSeconds: positive('seconds', { timer: true }).optional(),
      timeoutSeconds: positive('seconds', { timer: true }).optional(),
      maxTries: z.number().int().positive().optional(),
      retryBaseDelayMs: positive('milliseconds', { timer: true }).optional(),
      retryMaxDelayMs: positive('milliseconds', { timer: true }).optional(),
    })
    .optional(),
  logLevel: z.enum(LOG_LEVELS).optional(),
});
type FileConfig = z.infer<typeof fileSchema>;

export interface Config {
  workflowId: string;
  timezone: string;
  startDate: string;
  maxActiveRuns: number;
  /** How often a process looks for runs to claim: bounds how long a dead process's runs wait for a take-over. */
  claimIntervalMs: number;
  /** Whole-run timeout (Airflow's dagrun_timeout); null: none, as in the original DAG. */
  runTimeoutMs: number | null;
  /** Connection URIs; they may hold secrets: never log them (see describeConfig). */
  connections: { dwh: string; sap: string; smtp: string };
  connectionIds: { dwh: string; sap: string; smtp: string };
  email: { recipients: string[]; from: string };
  flagSensor: { flagTable: string; flagCode: string; pokeIntervalMs: number; timeoutMs: number };
  successEndSensor: { pokeIntervalMs: number; timeoutMs: number; executionDeltaDays: number };
  children: Record<string, ChildConfig>;
  pools: Record<string, { slots: number }>;
  sap: { viewName: string; connectTimeoutMs: number; timeoutMs: number; maxTries: number; retryBaseDelayMs: number; retryMaxDelayMs: number };
  logLevel: string;
}

/** Child workflows the SPEC's steps run, by step. */
export const STEP_CHILDREN = {
  run_sys_kill_all_session_pg: 'sys_kill_all_session_pg',
  run_wf_data_preparation_for_reports: 'wf_data_preparation_for_reports',
  load_ds_client_segmentation: 'l1_to_l2_p_load_data_ds_client_segmentation_full',
} as const;

/** A short, quoted rendering of a value an operator wrote (never used for connection URIs, which may hold secrets). */
function quote(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v) ?? String(v);
  return JSON.stringify(s.length > 60 ? `${s.slice(0, 57)}...` : s);
}

function typeName(v: unknown): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'empty (null)';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return `a ${typeof v} (${quote(v)})`;
}

const EXPECTED: Record<string, string> = {
  number: 'a number (unquoted)',
  int: 'a whole number (unquoted)',
  string: 'a text value',
  boolean: 'true or false',
  object: 'a mapping of settings (key: value)',
  record: 'a mapping of settings (key: value)',
  array: 'a list',
};

/** Messages for the file schema's issues that carry no message of their own: say what is wrong and what to write. */
const fileErrorMap: z.core.$ZodErrorMap = (iss) => {
  switch (iss.code) {
    case 'invalid_type': {
      const want = EXPECTED[iss.expected] ?? iss.expected;
      if (iss.input === undefined) return `is required: write ${want}`;
      if ((iss.expected === 'number' || iss.expected === 'int') && typeof iss.input === 'number') return `must be ${want}, not ${iss.input}`;
      const unquote = (iss.expected === 'number' || iss.expected === 'int') && typeof iss.input === 'string' && Number.isFinite(Number(iss.input));
      return `must be ${want}, not ${typeName(iss.input)}${unquote ? ': remove the quotes' : ''}`;
    }
    case 'too_small':
      if (iss.origin === 'number' || iss.origin === 'int') return `must be ${iss.inclusive ? 'at least' : 'greater than'} ${String(iss.minimum)}`;
      if (iss.origin === 'string') return 'must not be empty';
      return `must hold at least ${String(iss.minimum)} item(s)`;
    case 'too_big':
      return `must be at most ${String(iss.maximum)}`;
    case 'invalid_value':
      return `must be ${iss.values.length === 1 ? '' : 'one of '}${iss.values.map((v) => JSON.stringify(v)).join(', ')}`;
    default:
      return undefined;
  }
};

/** The keys a strict object accepts at `at` (a path into the file), for "did you mean" help; [] when unknown. */
function validKeysAt(schema: z.ZodType, at: PropertyKey[], raw: unknown): string[] {
  let s: z.ZodType = schema;
  let value: unknown = raw;
  const unwrap = () => {
    for (;;) {
      if (s instanceof z.ZodOptional) s = s.unwrap() as z.ZodType;
      else if (s instanceof z.ZodDiscriminatedUnion) {
        const disc: string = s.def.discriminator;
        const kind = value && typeof value === 'object' ? (value as Record<string, unknown>)[disc] : undefined;
        const option = (s.options as z.ZodType[]).find((o) => o instanceof z.ZodObject && (o.shape as Record<string, z.ZodType>)[disc]?.safeParse(kind).success);
        if (!option) return;
        s = option;
      } else return;
    }
  };
  for (const part of at) {
    unwrap();
    value = value && typeof value === 'object' ? (value as Record<PropertyKey, unknown>)[part] : undefined;
    if (s instanceof z.ZodObject) s = (s.shape as Record<string, z.ZodType>)[String(part)] ?? z.never();
    else if (s instanceof z.ZodRecord) s = s.valueType as z.ZodType;
    else return [];
  }
  unwrap();
  return s instanceof z.ZodObject ? Object.keys(s.shape) : [];
}

function readFileConfig(file: string): FileConfig {
  const name = path.basename(file);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : code === 'EACCES' ? 'permission denied' : code;
    throw new ConfigError('L2FLOW_CONFIG', `cannot read ${file} (${why}): point L2FLOW_CONFIG at an existing YAML or JSON file, or unset it`);
  }
  const json = /\.json$/i.test(file);
  let raw: unknown;
  try {
    raw = json ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    // Parser messages can quote the file's text, and the file may hold connection passwords: give the position only.
    throw new ConfigError('L2FLOW_CONFIG', `${file} is not valid ${json ? 'JSON' : 'YAML'} (${parseErrorWhere(text, err)}): fix the syntax there`);
  }
  const parsed = fileSchema.safeParse(raw ?? {}, { error: fileErrorMap });
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    if (issue.code === 'unrecognized_keys') {
      const where = issue.path.join('.');
      const valid = validKeysAt(fileSchema, issue.path, raw);
      throw new ConfigError(
        issue.keys.map((k) => (where ? `${where}.${k}` : k)).join(', '),
        `unknown setting: remove it or check its spelling${valid.length ? `; valid settings${where ? ` under ${where}` : ''}: ${valid.join(', ')}` : ''}`,
        name,
      );
    }
    throw new ConfigError(issue.path.join('.') || '(top level)', issue.message, name);
  }
  return parsed.data;
}

/** "line L, column C" of a JSON or YAML syntax error, without quoting the text. */
function parseErrorWhere(text: string, err: unknown): string {
  const linePos = (err as { linePos?: [{ line: number; col: number }] }).linePos; // yaml's YAMLParseError
  if (linePos?.[0]) return `line ${linePos[0].line}, column ${linePos[0].col}`;
  const message = (err as Error).message ?? '';
  const at = (offset: number) => {
    const before = text.slice(0, offset);
    return `line ${before.split('\n').length}, column ${offset - before.lastIndexOf('\n')}`;
  };
  const pos = /at position (\d+)/.exec(message);
  if (pos) return at(Number(pos[1]));
  // V8's `Unexpected token 'x', ..."<about 10 characters either side>"... is not valid JSON`: find that excerpt.
  const excerpt = /^Unexpected token .*?, (\.\.\.)?"(.*)"(\.\.\.)? is not valid JSON$/s.exec(message);
  if (excerpt?.[2]) {
    const i = text.indexOf(excerpt[2]);
    if (i >= 0) return at(i + (excerpt[1] ? 10 : 0));
  }
  // JSON is YAML: the YAML parser can locate what JSON.parse only quoted.
  try {
    parseYaml(text);
  } catch (yamlErr) {
    const lp = (yamlErr as { linePos?: [{ line: number; col: number }] }).linePos;
    if (lp?.[0]) return `line ${lp[0].line}, column ${lp[0].col}`;
  }
  return /end of JSON input/i.test((err as Error).message ?? '') ? 'the file ends too early' : 'syntax error';
}

function validTimezone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** An environment variable's value; unset and empty count as not given. */
function envValue(env: NodeJS.ProcessEnv, key: string): string | undefined {
  const v = env[key]?.trim();
  return v ? v : undefined;
}

type ConnKind = 'postgres' | 'sap' | 'smtp';
const CONN_EXAMPLE: Record<ConnKind, string> = {
  postgres: 'postgres://user:password@host:5432/dwh',
  sap: 'https://user:password@sap.example/readiness',
  smtp: 'smtp://user:password@mail.example:587',
};

/**
 * The URI of a connection id: L2FLOW_CONN_<ID>, then AIRFLOW_CONN_<ID>, then the config file's `connections`.
 * Errors name the variable (or file key) the URI came from and never quote the URI: it may hold a password.
 */
function resolveConnection(env: NodeJS.ProcessEnv, file: FileConfig, fileName: string | undefined, idKey: string, id: string, kind: ConnKind): string {
  const upper = id.toUpperCase();
  const example = CONN_EXAMPLE[kind];
  const sources: [key: string, value: string | undefined, source?: string][] = [
    [`L2FLOW_CONN_${upper}`, envValue(env, `L2FLOW_CONN_${upper}`)],
    [`AIRFLOW_CONN_${upper}`, envValue(env, `AIRFLOW_CONN_${upper}`)],
    [`connections.${id}`, file.connections?.[id]?.trim() || undefined, fileName],
  ];
  const found = sources.find(([, v]) => v !== undefined);
  if (!found) {
    throw new ConfigError(
      `L2FLOW_CONN_${upper}`,
      `connection "${id}" (named by ${idKey}) is not set: export L2FLOW_CONN_${upper}=${example} (AIRFLOW_CONN_${upper} works too, or connections.${id} in the L2FLOW_CONFIG file)`,
    );
  }
  const [key, uri, source] = found as [string, string, string | undefined];
  const fail = (what: string): never => {
    throw new ConfigError(key, `connection "${id}" ${what}: write it like ${example}`, source);
  };
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(uri)?.[1]?.toLowerCase();
  if (!scheme) fail('is not a URI (it must start with a scheme such as postgres://, https:// or smtp://)');
  const schemes = kind === 'postgres' ? ['postgres', 'postgresql'] : kind === 'sap' ? ['http', 'https'] : ['smtp', 'smtps'];
  if (!schemes.includes(scheme!)) fail(`has scheme "${scheme!.slice(0, 20)}" but must use ${schemes.map((s) => `${s}://`).join(' or ')}`);
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    // URL's own error quotes the input, password included.
    return fail('is not a valid URI (check the port, and percent-encode special characters in the password, e.g. @ as %40)');
  }
  if (kind === 'postgres') {
    if (!url.hostname && !url.searchParams.get('host')) fail('has no host');
    for (const [part, what] of [[url.username, 'user name'], [url.password, 'password']] as const) {
      try {
        decodeURIComponent(part);
      } catch {
        fail(`has a badly percent-encoded ${what} (write % as %25)`);
      }
    }
    return uri;
  }
  // The services' own parsers, run now so a bad URI stops start-up here rather than half-way through it.
  try {
    if (kind === 'sap') parseSapConnection(uri);
    else parseSmtpConnection(uri);
  } catch (err) {
    throw new ConfigError(key, `connection "${id}": ${(err as Error).message}`, source);
  }
  return uri;
}

function envNumber(env: NodeJS.ProcessEnv, key: string, opts: { integer?: boolean; max?: number; example: number }): number | undefined {
  const v = envValue(env, key);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new ConfigError(key, `"${v.slice(0, 40)}" is not a number greater than 0: write e.g. ${key}=${opts.example}`);
  if (opts.integer && !Number.isInteger(n)) throw new ConfigError(key, `"${v.slice(0, 40)}" is not a whole number: write e.g. ${key}=${opts.example}`);
  if (opts.max !== undefined && n > opts.max) throw new ConfigError(key, `${n} is too large: write at most ${opts.max}`);
  return n;
}

/**
 * Read and validate the configuration; throws ConfigError naming the key and the fix.
 * Scope `dwh` (migrate, trigger, status) needs only the warehouse connection; SAP, SMTP, recipients and
 * children are then left empty and unchecked.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, opts: { scope?: 'full' | 'dwh' } = {}): Config {
  const full = opts.scope !== 'dwh';
  const configFile = envValue(env, 'L2FLOW_CONFIG');
  const file = configFile ? readFileConfig(configFile) : ({} as FileConfig);
  const fileName = configFile && path.basename(configFile);

  const envTz = envValue(env, 'L2FLOW_TIMEZONE');
  const timezone = envTz ?? file.workflow?.timezone ?? 'Asia/Tashkent';
  if (!validTimezone(timezone)) {
    throw new ConfigError(envTz ? 'L2FLOW_TIMEZONE' : 'workflow.timezone', `${quote(timezone)} is not an IANA time zone: write e.g. Asia/Tashkent or UTC`, envTz ? undefined : fileName);
  }
  const envStart = envValue(env, 'L2FLOW_START_DATE');
  const startDate = envStart ?? file.workflow?.startDate ?? '2023-12-22';
  if (!isIsoDate(startDate)) {
    throw new ConfigError(envStart ? 'L2FLOW_START_DATE' : 'workflow.startDate', `${quote(startDate)} is not a calendar date: write YYYY-MM-DD, e.g. 2023-12-22`, envStart ? undefined : fileName);
  }
  const maxActiveRuns = envNumber(env, 'L2FLOW_MAX_ACTIVE_RUNS', { integer: true, example: 20 }) ?? file.workflow?.maxActiveRuns ?? 20;

  const connectionIds = {
    dwh: envValue(env, 'DWH_CONN_ID') ?? 'dwh',
    sap: envValue(env, 'SAP_CONN_ID') ?? 'sap_conn',
    smtp: envValue(env, 'SMTP_CONN_ID') ?? 'smtp_default',
  };
  const connections = {
    dwh: resolveConnection(env, file, fileName, 'DWH_CONN_ID', connectionIds.dwh, 'postgres'),
    sap: !full ? '' : resolveConnection(env, file, fileName, 'SAP_CONN_ID', connectionIds.sap, 'sap'),
    smtp: !full ? '' : resolveConnection(env, file, fileName, 'SMTP_CONN_ID', connectionIds.smtp, 'smtp'),
  };

  const envRecipients = envValue(env, 'EMAIL_RECIPIENTS');
  const recipientsKey = envRecipients !== undefined ? 'EMAIL_RECIPIENTS' : 'email.recipients';
  const recipients = (envRecipients !== undefined ? envRecipients.split(',') : (file.email?.recipients ?? [])).map((r) => r.trim()).filter(Boolean);
  if (full && recipients.length === 0) {
    throw new ConfigError('EMAIL_RECIPIENTS', 'no failure-mail recipients: export EMAIL_RECIPIENTS=dwh-team@bank.example,oncall@bank.example (comma separated)');
  }
  const bad = recipients.find((r) => !/^[^@\s;<>]+@[^@\s;<>]+$/.test(r));
  if (bad) {
    throw new ConfigError(recipientsKey, `${quote(bad)} is not an e-mail address: write a comma-separated list like a@bank.example,b@bank.example`, envRecipients !== undefined ? undefined : fileName);
  }

  const flag = file.sensors?.wait_for_l2_full_load ?? {};
  const prev = file.sensors?.wait_for_success_end ?? {};
  const flagTable = flag.flagTable ?? 'md.dwh_flag';
  if (!/^([A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*$/.test(flagTable)) {
    throw new ConfigError('sensors.wait_for_l2_full_load.flagTable', `${quote(flagTable)} is not a table name: write schema.table, e.g. md.dwh_flag`, fileName);
  }

  const children: Record<string, ChildConfig> = { sys_kill_all_session_pg: { kind: 'builtin', name: 'sys_kill_all_session_pg' } };
  for (const [name, c] of Object.entries(file.children ?? {})) {
    const { timeoutSeconds, ...rest } = c;
    children[name] = timeoutSeconds === undefined ? rest : { ...rest, timeoutMs: timeoutSeconds * 1000 };
  }
  for (const child of Object.values(STEP_CHILDREN)) {
    if (full && !children[child]) {
      throw new ConfigError(
        `children.${child}`,
        `child workflow "${child}" is not configured: add to the L2FLOW_CONFIG file${configFile ? ` (${configFile})` : ''}\n  children:\n    ${child}:\n      kind: sql\n      statement: "call l2.${child}($1::date, $2::bigint)"`,
      );
    }
  }

  const envLevel = envValue(env, 'L2FLOW_LOG_LEVEL');
  if (envLevel !== undefined && !LOG_LEVELS.includes(envLevel as (typeof LOG_LEVELS)[number])) {
    throw new ConfigError('L2FLOW_LOG_LEVEL', `${quote(envLevel)} is not a log level: write one of ${LOG_LEVELS.join(', ')}`);
  }
  const pokeL2 = envNumber(env, 'L2FLOW_FLAG_POKE_INTERVAL_SECONDS', { max: Math.floor(MAX_TIMER_MS / 1000), example: 60 }) ?? flag.pokeIntervalSeconds ?? 60;
  return {
    workflowId: WORKFLOW_ID,
    timezone,
    startDate,
    maxActiveRuns,
    runTimeoutMs: ((t) => (t === undefined ? null : t * 1000))(
      envNumber(env, 'L2FLOW_RUN_TIMEOUT_SECONDS', { max: Math.floor(MAX_TIMER_MS / 1000), example: 86400 }) ?? file.workflow?.runTimeoutSeconds,
    ),
    claimIntervalMs: (envNumber(env, 'L2FLOW_CLAIM_INTERVAL_SECONDS', { max: 3600, example: 2 }) ?? file.workflow?.claimIntervalSeconds ?? 2) * 1000,
    connections,
    connectionIds,
    email: { recipients, from: envValue(env, 'EMAIL_FROM') ?? file.email?.from ?? 'l2flow@localhost' },
    flagSensor: {
      flagTable,
      flagCode: flag.flagCode ?? 'l1_to_l2_load_successfull',
      pokeIntervalMs: pokeL2 * 1000,
      timeoutMs: (flag.timeoutSeconds ?? 7 * DAY_S) * 1000,
    },
    successEndSensor: {
      pokeIntervalMs: (prev.pokeIntervalSeconds ?? 100) * 1000,
      timeoutMs: (prev.timeoutSeconds ?? 7 * DAY_S) * 1000,
      executionDeltaDays: prev.executionDeltaDays ?? 1,
    },
    children,
    pools: { dwh_l2: { slots: 1 }, ...file.pools },
    sap: {
      viewName: file.sap?.viewName ?? 'wk_export.ds_client_segmentation_last_v',
      connectTimeoutMs: (file.sap?.connectTimeoutSeconds ?? 10) * 1000,
      timeoutMs: (file.sap?.timeoutSeconds ?? 30) * 1000,
      maxTries: file.sap?.maxTries ?? 5,
      retryBaseDelayMs: file.sap?.retryBaseDelayMs ?? 1000,
      retryMaxDelayMs: file.sap?.retryMaxDelayMs ?? 60_000,
    },
    logLevel: envLevel ?? file.logLevel ?? 'info',
  };
}

/** Replace the password (and any token parameter) of a URI with ***, for logs and status output. */
export function redactUri(uri: string): string {
  try {
    const url = new URL(uri);
    if (url.password) url.password = '***';
    for (const key of [...url.searchParams.keys()]) {
      if (/token|password|secret|key|__extra__/i.test(key)) url.searchParams.set(key, '***');
    }
    return url.toString();
  } catch {
    return '(unparseable URI)';
  }
}

/** The configuration with every secret masked. */
export function describeConfig(cfg: Config): Record<string, unknown> {
  return {
    ...cfg,
    connections: {
      dwh: redactUri(cfg.connections.dwh),
      sap: cfg.connections.sap && redactUri(cfg.connections.sap),
      smtp: cfg.connections.smtp && redactUri(cfg.connections.smtp),
    },
  };
}
