import path from 'node:path';
import { WORKFLOW_ID } from '../machines/workflow.js';
import type { ChildConfig } from '../services/children/index.js';
import { isIsoDate } from '../lib/dates.js';
import { MAX_TIMER_MS } from '../lib/time.js';
import { parseSmtpConnection } from '../services/mail/index.js';
import { parseSapConnection } from '../services/sap/index.js';
import { ConfigError, DAY_S, LOG_LEVELS, quote, readFileConfig, type FileConfig } from './config-file.js';

export type { ChildConfig };
export { ConfigError };

/**
 * Configuration, read once at start-up and validated. This is the only module that reads `process.env`.
 * Sources, strongest first: environment variables, the optional L2FLOW_CONFIG file (YAML or JSON), defaults.
 */

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
