import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { WORKFLOW_ID } from '../machines/workflow.js';
import { isIsoDate } from '../services/dates.js';

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
  ) {
    super(`configuration error: ${key}: ${problem}`);
  }
}

const DAY_S = 24 * 3600;

const positive = (what: string) => z.number({ error: `must be a number of ${what}` }).positive({ error: `must be greater than 0 (${what})` });

const childSchema = z.discriminatedUnion(
  'kind',
  [
    z.strictObject({
      kind: z.literal('sql'),
      statement: z.string().min(1, { error: 'must be a SQL statement, e.g. "call l2.my_proc($1, $2)"' }),
      timeoutSeconds: positive('seconds').optional(),
      transactional: z.boolean().optional(),
    }),
    z.strictObject({
      kind: z.literal('builtin'),
      name: z.literal('sys_kill_all_session_pg', { error: 'the only builtin child is sys_kill_all_session_pg' }),
      idleSeconds: z.number().int().nonnegative().optional(),
      timeoutSeconds: positive('seconds').optional(),
    }),
  ],
  { error: 'kind must be "sql" (a statement run in the warehouse) or "builtin" (sys_kill_all_session_pg)' },
);

const fileSchema = z.strictObject({
  workflow: z
    .strictObject({
      timezone: z.string().optional(),
      startDate: z.string().optional(),
      maxActiveRuns: z.number().int().positive().optional(),
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
          pokeIntervalSeconds: positive('seconds').optional(),
          timeoutSeconds: positive('seconds').optional(),
        })
        .optional(),
      wait_for_success_end: z
        .strictObject({
          pokeIntervalSeconds: positive('seconds').optional(),
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
      connectTimeoutSeconds: positive('seconds').optional(),
      timeoutSeconds: positive('seconds').optional(),
      maxTries: z.number().int().positive().optional(),
      retryBaseDelayMs: positive('milliseconds').optional(),
      retryMaxDelayMs: positive('milliseconds').optional(),
    })
    .optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).optional(),
});
type FileConfig = z.infer<typeof fileSchema>;

export type ChildConfig =
  | { kind: 'sql'; statement: string; timeoutMs?: number; transactional?: boolean }
  | { kind: 'builtin'; name: 'sys_kill_all_session_pg'; idleSeconds?: number; timeoutMs?: number };

export interface Config {
  workflowId: string;
  timezone: string;
  startDate: string;
  maxActiveRuns: number;
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

function readFileConfig(file: string): FileConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError('L2FLOW_CONFIG', `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'}): point it at an existing YAML or JSON file`);
  }
  let raw: unknown;
  try {
    raw = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigError('L2FLOW_CONFIG', `${file} is not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`);
  }
  const parsed = fileSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = issue.path.join('.') || '(top level)';
    const msg = issue.code === 'unrecognized_keys' ? `unknown setting ${issue.keys.map((k) => `"${k}"`).join(', ')}: remove it or check its spelling` : issue.message;
    throw new ConfigError(`${key} (in ${path.basename(file)})`, msg);
  }
  return parsed.data;
}

function validTimezone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** The URI of a connection id: L2FLOW_CONN_<ID>, then AIRFLOW_CONN_<ID>, then the config file's `connections`. */
function resolveConnection(env: NodeJS.ProcessEnv, file: FileConfig, idKey: string, id: string, schemes: string[], example: string): string {
  const upper = id.toUpperCase();
  const uri = env[`L2FLOW_CONN_${upper}`] ?? env[`AIRFLOW_CONN_${upper}`] ?? file.connections?.[id];
  if (!uri) {
    throw new ConfigError(
      `L2FLOW_CONN_${upper}`,
      `connection "${id}" (from ${idKey}) is not set: export L2FLOW_CONN_${upper}=${example} (AIRFLOW_CONN_${upper} works too)`,
    );
  }
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new ConfigError(`L2FLOW_CONN_${upper}`, `connection "${id}" is not a valid URI: write it like ${example}`);
  }
  const scheme = url.protocol.replace(/:$/, '');
  if (!schemes.includes(scheme)) {
    throw new ConfigError(`L2FLOW_CONN_${upper}`, `connection "${id}" has scheme "${scheme}" but must be one of ${schemes.join(', ')}: write it like ${example}`);
  }
  if (!url.hostname) throw new ConfigError(`L2FLOW_CONN_${upper}`, `connection "${id}" has no host: write it like ${example}`);
  return uri;
}

function envNumber(env: NodeJS.ProcessEnv, key: string): number | undefined {
  const v = env[key];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new ConfigError(key, `"${v}" is not a positive number: write e.g. ${key}=60`);
  return n;
}

/**
 * Read and validate the configuration; throws ConfigError naming the key and the fix.
 * Scope `dwh` (migrate, trigger, status) needs only the warehouse connection; SAP, SMTP, recipients and
 * children are then left empty and unchecked.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, opts: { scope?: 'full' | 'dwh' } = {}): Config {
  const full = opts.scope !== 'dwh';
  const file = env.L2FLOW_CONFIG ? readFileConfig(env.L2FLOW_CONFIG) : ({} as FileConfig);

  const timezone = env.L2FLOW_TIMEZONE ?? file.workflow?.timezone ?? 'Asia/Tashkent';
  if (!validTimezone(timezone)) throw new ConfigError(env.L2FLOW_TIMEZONE ? 'L2FLOW_TIMEZONE' : 'workflow.timezone', `"${timezone}" is not an IANA time zone: write e.g. Asia/Tashkent or UTC`);
  const startDate = env.L2FLOW_START_DATE ?? file.workflow?.startDate ?? '2023-12-22';
  if (!isIsoDate(startDate)) throw new ConfigError(env.L2FLOW_START_DATE ? 'L2FLOW_START_DATE' : 'workflow.startDate', `"${startDate}" is not a date: write YYYY-MM-DD, e.g. 2023-12-22`);
  const maxActiveRuns = envNumber(env, 'L2FLOW_MAX_ACTIVE_RUNS') ?? file.workflow?.maxActiveRuns ?? 20;
  if (!Number.isInteger(maxActiveRuns)) throw new ConfigError('L2FLOW_MAX_ACTIVE_RUNS', 'must be a whole number, e.g. 20');

  const connectionIds = { dwh: env.DWH_CONN_ID || 'dwh', sap: env.SAP_CONN_ID || 'sap_conn', smtp: env.SMTP_CONN_ID || 'smtp_default' };
  const connections = {
    dwh: resolveConnection(env, file, 'DWH_CONN_ID', connectionIds.dwh, ['postgres', 'postgresql'], 'postgres://user:password@host:5432/dwh'),
    sap: !full ? '' : resolveConnection(env, file, 'SAP_CONN_ID', connectionIds.sap, ['http', 'https'], 'https://user:password@sap.example/readiness'),
    smtp: !full ? '' : resolveConnection(env, file, 'SMTP_CONN_ID', connectionIds.smtp, ['smtp', 'smtps'], 'smtp://user:password@mail.example:587'),
  };

  const recipientsRaw = env.EMAIL_RECIPIENTS !== undefined ? env.EMAIL_RECIPIENTS.split(',') : (file.email?.recipients ?? []);
  const recipients = recipientsRaw.map((r) => r.trim()).filter(Boolean);
  if (full && recipients.length === 0) throw new ConfigError('EMAIL_RECIPIENTS', 'no failure-mail recipients: export EMAIL_RECIPIENTS=dwh-team@bank.example,oncall@bank.example');
  const bad = recipients.find((r) => !/^[^@\s]+@[^@\s]+$/.test(r));
  if (bad) throw new ConfigError('EMAIL_RECIPIENTS', `"${bad}" is not an e-mail address: write a comma-separated list like a@bank.example,b@bank.example`);

  const flag = file.sensors?.wait_for_l2_full_load ?? {};
  const prev = file.sensors?.wait_for_success_end ?? {};
  const flagTable = flag.flagTable ?? 'md.dwh_flag';
  if (!/^([A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*$/.test(flagTable)) {
    throw new ConfigError('sensors.wait_for_l2_full_load.flagTable', `"${flagTable}" is not a table name: write schema.table, e.g. md.dwh_flag`);
  }

  const children: Record<string, ChildConfig> = { sys_kill_all_session_pg: { kind: 'builtin', name: 'sys_kill_all_session_pg' } };
  for (const [name, c] of Object.entries(file.children ?? {})) {
    const { timeoutSeconds, ...rest } = c;
    children[name] = timeoutSeconds === undefined ? rest : { ...rest, timeoutMs: timeoutSeconds * 1000 };
  }
  for (const child of Object.values(STEP_CHILDREN)) {
    if (full && !children[child]) {
      throw new ConfigError(`children.${child}`, `child workflow "${child}" is not configured: add to the L2FLOW_CONFIG file\n  children:\n    ${child}:\n      kind: sql\n      statement: "call l2.${child}($1::date, $2::bigint)"`);
    }
  }

  const pokeL2 = envNumber(env, 'L2FLOW_FLAG_POKE_INTERVAL_SECONDS') ?? flag.pokeIntervalSeconds ?? 60;
  return {
    workflowId: WORKFLOW_ID,
    timezone,
    startDate,
    maxActiveRuns,
    connections,
    connectionIds,
    email: { recipients, from: env.EMAIL_FROM ?? file.email?.from ?? 'l2flow@localhost' },
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
    logLevel: env.L2FLOW_LOG_LEVEL ?? file.logLevel ?? 'info',
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
