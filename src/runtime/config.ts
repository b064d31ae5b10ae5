import path from 'node:path';
import { CONNECTION_KINDS, ConnectionError, displayUri, parseConnection, type ConnectionKind } from '../lib/connection.js';
import { STEP_CHILDREN, type StepId } from '../machines/steps.js';
import { CLEARABLE_STEPS } from '../machines/clear-plan.js';
import type { StepRetryPolicy } from '../machines/step-retry.js';
import { WORKFLOW_ID } from '../machines/workflow.js';
import { parseAirflowConnection, type ChildConfig } from '../services/children/index.js';
import { parseSmtpConnection } from '../services/mail/index.js';
import { ENV_KEYS, envIssueMessage, envSourceOf, envValue, overlayEnv } from './config-env.js';
import { ConfigError, fileErrorMap, fileIssueError, readConfigFile } from './config-file.js';
import { settingsSchema, type Settings } from './config-schema.js';
import { scheduleFromSettings, type ScheduleConfig } from './config-schedule.js';
import { httpToken, type ApiToken } from './config-http.js';

export type { ChildConfig, ApiToken };
export type { ScheduleConfig, DateWindow } from './config-schedule.js';
export type { FileConfig } from './config-schema.js';
export { ConfigError, ENV_KEYS };

/**
 * Configuration, read once at start-up and validated. This is the only module that reads `process.env`.
 * Sources, strongest first: environment variables (through ENV_KEYS), the optional L2FLOW_CONFIG file (YAML or
 * JSON), the defaults of the one schema (config-schema.ts).
 */

export interface Config {
  workflowId: string;
  timezone: string;
  startDate: string;
  maxActiveRuns: number;
  /** Connections of the shared pool: short queries of every run, sensor checks, snapshots, the mail outbox. */
  poolSize: number;
  /** Child statements executing at once in one process, each on a connection of its own. */
  childConnections: number;
  /** How often a process looks for runs to claim: bounds how long a dead process's runs wait for a take-over. */
  claimIntervalMs: number;
  /** Whole-run timeout (Airflow's dagrun_timeout); null: none, as in the original DAG. */
  runTimeoutMs: number | null;
  /** Retries of each step (workflow defaults overlaid by steps.<step_id>); only steps with retries > 0 are listed. */
  retry: Partial<Record<StepId, StepRetryPolicy>>;
  /**
   * Connection URIs; they may hold secrets: never log them (see describeConfig). `state` is where l2flow's own
   * tables live: the warehouse's URI itself unless connection id `state` is set (see stateIsWarehouse).
   * `dwhListen` (connection id `dwh_listen`, optional): where the warehouse's LISTEN connection goes instead of
   * `dwh`, e.g. straight to PostgreSQL when `dwh` goes through pgbouncer; the same database (checked at start).
   */
  connections: { dwh: string; state: string; sap: string; smtp: string; dwhListen?: string };
  connectionIds: { dwh: string; state: string; sap: string; smtp: string };
  /** The URI of every connection id an airflow child names; secrets too (see connectionUris). */
  airflowConnections: Record<string, string>;
  email: { recipients: string[]; from: string };
  /** `notify` false: no trigger on the flag table, no LISTEN for it; the sensor polls alone. */
  flagSensor: { flagTable: string; flagCode: string; pokeIntervalMs: number; timeoutMs: number; notify: boolean };
  successEndSensor: {
    pokeIntervalMs: number; timeoutMs: number; executionDeltaDays: number;
    whenMissing: 'wait' | 'pass'; whenFailed: 'wait' | 'fail'; blockedMailAfterMs: number | null;
  };
  /** Expected-by times (HH:MM[:SS] on the logical date, workflow timezone) of the run and of single steps. */
  deadlines: { expectedBy: string | null; steps: Partial<Record<StepId, string>> };
  /** The flag written with `end` on success (into the flag sensor's table), or null. */
  completionFlag: { flagTable: string; flagCode: string } | null;
  children: Record<string, ChildConfig>;
  pools: Record<string, { slots: number }>;
  sap: { viewName: string; connectTimeoutMs: number; timeoutMs: number; maxTries: number; retryBaseDelayMs: number; retryMaxDelayMs: number };
  logLevel: string;
  /** pretty or json; null: pretty when stdout is a terminal, else json (logFormatFor). */
  logFormat: 'pretty' | 'json' | null;
  /** Last logical date (workflow.endDate), or null. */
  endDate: string | null;
  /** How runs are created besides `trigger` (cron, onFlag), each with its date window resolved. */
  schedule: ScheduleConfig;
  /** The HTTP server (src/runtime/http); `token` holds a secret: never log it (see describeConfig). */
  http: { enabled: boolean; host: string; port: number; token: ApiToken | null };
}



export { STEP_CHILDREN };

/** The connection id of the optional LISTEN URI (L2FLOW_CONN_DWH_LISTEN, AIRFLOW_CONN_DWH_LISTEN, connections.dwh_listen). */
export const LISTEN_CONNECTION_ID = 'dwh_listen';

/** The configuration's values in the runtime's units (ms), from checked settings; connections are resolved apart. */
function fromSettings(s: Settings, source?: string): Omit<Config, 'connections' | 'airflowConnections'> {
  const flag = s.sensors.wait_for_l2_full_load;
  const prev = s.sensors.wait_for_success_end;
  const children: Record<string, ChildConfig> = {};
  for (const [name, c] of Object.entries(s.children)) {
    if (c.kind === 'airflow') {
      const { pokeIntervalSeconds, maxPokeIntervalSeconds, timeoutSeconds, requestTimeoutSeconds, ...rest } = c;
      children[name] = {
        ...rest,
        pokeIntervalMs: pokeIntervalSeconds * 1000,
        maxPokeIntervalMs: maxPokeIntervalSeconds * 1000,
        requestTimeoutMs: requestTimeoutSeconds * 1000,
        ...(timeoutSeconds === undefined ? {} : { timeoutMs: timeoutSeconds * 1000 }),
      };
      continue;
    }
    const { timeoutSeconds, ...rest } = c as ChildConfig & { timeoutSeconds?: number };
    children[name] = timeoutSeconds === undefined ? rest : { ...rest, timeoutMs: timeoutSeconds * 1000 };
  }
  return {
    workflowId: WORKFLOW_ID,
    timezone: s.workflow.timezone,
    startDate: s.workflow.startDate,
    maxActiveRuns: s.workflow.maxActiveRuns,
    poolSize: s.workflow.poolSize,
    childConnections: s.workflow.childConnections,
    runTimeoutMs: s.workflow.runTimeoutSeconds === undefined ? null : s.workflow.runTimeoutSeconds * 1000,
    claimIntervalMs: s.workflow.claimIntervalSeconds * 1000,
    retry: retryPolicies(s),
    connectionIds: s.connectionIds,
    email: s.email,
    flagSensor: {
      flagTable: flag.flagTable, flagCode: flag.flagCode, pokeIntervalMs: flag.pokeIntervalSeconds * 1000, timeoutMs: flag.timeoutSeconds * 1000,
      notify: flag.notify,
    },
    successEndSensor: {
      pokeIntervalMs: prev.pokeIntervalSeconds * 1000, timeoutMs: prev.timeoutSeconds * 1000, executionDeltaDays: prev.executionDeltaDays,
      whenMissing: prev.whenMissing, whenFailed: prev.whenFailed,
      blockedMailAfterMs: prev.blockedMailAfterSeconds === undefined ? null : prev.blockedMailAfterSeconds * 1000,
    },
    deadlines: { expectedBy: s.workflow.expectedBy ?? null, steps: s.workflow.stepExpectedBy },
    completionFlag: s.completionFlag.enabled ? { flagTable: flag.flagTable, flagCode: s.completionFlag.flagCode } : null,
    children,
    pools: s.pools,
    sap: {
      viewName: s.sap.viewName,
      connectTimeoutMs: s.sap.connectTimeoutSeconds * 1000,
      timeoutMs: s.sap.timeoutSeconds * 1000,
      maxTries: s.sap.maxTries,
      retryBaseDelayMs: s.sap.retryBaseDelayMs,
      retryMaxDelayMs: s.sap.retryMaxDelayMs,
    },
    logLevel: s.logLevel,
    logFormat: s.logFormat ?? null,
    endDate: s.workflow.endDate ?? null,
    schedule: scheduleFromSettings(s, source),
    http: { ...s.http, token: null },
  };
}

/** Each step's retry policy in ms: the workflow's defaults with the step's own keys over them. */
function retryPolicies(s: Settings): Partial<Record<StepId, StepRetryPolicy>> {
  const out: Partial<Record<StepId, StepRetryPolicy>> = {};
  for (const step of CLEARABLE_STEPS) {
    const own = s.steps[step] ?? {};
    const retries = own.retries ?? s.workflow.retries;
    if (retries === 0) continue;
    const delayS = own.retryDelaySeconds ?? s.workflow.retryDelaySeconds;
    const maxS = own.maxRetryDelaySeconds ?? s.workflow.maxRetryDelaySeconds;
    out[step] = { retries, delayMs: delayS * 1000, maxDelayMs: Math.max(delayS, maxS) * 1000 };
  }
  return out;
}

const DEFAULT_SETTINGS = settingsSchema.parse({});

/** Every default, in the shape services receive it: tests and embedders take values from here instead of repeating them. */
export const DEFAULTS: Readonly<Omit<Config, 'connections' | 'airflowConnections'>> = Object.freeze(fromSettings(DEFAULT_SETTINGS));

/** The default of a settings key, written as an environment variable's value would be. */
function defaultText(key: string): string | undefined {
  let v: unknown = DEFAULT_SETTINGS;
  for (const part of key.split('.')) v = v && typeof v === 'object' ? (v as Record<string, unknown>)[part] : undefined;
  return v === undefined ? undefined : String(v);
}

/** The file's settings with the environment written over them, checked by the one schema. */
function readSettings(env: NodeJS.ProcessEnv, configFile: string | undefined, given: unknown, fileName: string | undefined): Settings {
  // A copy: the environment is written over it, and a caller's object must stay as it was.
  const raw = given !== undefined ? structuredClone(given) : configFile ? readConfigFile(configFile) : {};
  const sources = raw !== null && typeof raw === 'object' && !Array.isArray(raw) ? overlayEnv(raw as Record<string, unknown>, env) : new Map();
  const parsed = settingsSchema.safeParse(raw, { error: fileErrorMap });
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const fromEnv = envSourceOf(issue, sources);
  if (!fromEnv) throw fileIssueError(settingsSchema, issue, raw, fileName);
  const setting = ENV_KEYS[fromEnv.variable]!;
  throw new ConfigError(fromEnv.variable, envIssueMessage(issue, fromEnv, setting.example ?? defaultText(setting.key) ?? '…'));
}

/**
 * Read and validate the configuration; throws ConfigError naming the key and the fix.
 * Scope `dwh` (migrate, trigger, status) needs only the warehouse connection; SAP, SMTP, recipients and
 * children are then left empty and unchecked.
 */
export function loadConfig(
  env: NodeJS.ProcessEnv = process.env,
  opts: { scope?: 'full' | 'dwh'; /** The file's settings as an object (createL2flow's `config`): replaces L2FLOW_CONFIG. */ file?: unknown } = {},
): Config {
  const full = opts.scope !== 'dwh';
  const configFile = opts.file !== undefined ? undefined : envValue(env, 'L2FLOW_CONFIG');
  const fileName = opts.file !== undefined ? 'the config object' : configFile && path.basename(configFile);
  const settings = readSettings(env, configFile, opts.file, fileName);
  const ids = settings.connectionIds;
  const connection = (idKey: string, id: string, kind: ConnectionKind) => resolveConnection(env, settings.connections, fileName, idKey, id, kind);
  const dwh = connection('DWH_CONN_ID', ids.dwh, 'postgres');
  const connections: Config['connections'] = {
    dwh,
    // Unset: l2flow's tables stay in the warehouse, as before the state connection existed.
    state: connectionSource(env, settings.connections, fileName, ids.state) ? connection('STATE_CONN_ID', ids.state, 'postgres') : dwh,
    sap: !full ? '' : connection('SAP_CONN_ID', ids.sap, 'sap'),
    smtp: !full ? '' : connection('SMTP_CONN_ID', ids.smtp, 'smtp'),
  };
  // Optional: only `run` listens, so only the full scope reads it.
  if (full && connectionSource(env, settings.connections, fileName, LISTEN_CONNECTION_ID)) {
    connections.dwhListen = connection(LISTEN_CONNECTION_ID, LISTEN_CONNECTION_ID, 'postgres');
  }
  if (full && settings.email.recipients.length === 0) {
    throw new ConfigError('EMAIL_RECIPIENTS', 'no failure-mail recipients: export EMAIL_RECIPIENTS=dwh-team@bank.example,oncall@bank.example (comma separated)');
  }
  for (const child of Object.values(STEP_CHILDREN)) {
    if (full && !settings.children[child]) {
      throw new ConfigError(
        `children.${child}`,
        `child workflow "${child}" is not configured: add to the L2FLOW_CONFIG file${configFile ? ` (${configFile})` : ''}\n  children:\n    ${child}:\n      kind: sql\n      statement: "call l2.${child}($1::date, $2::bigint)"`,
      );
    }
  }
  const airflowConnections: Record<string, string> = {};
  for (const [name, c] of full ? Object.entries(settings.children) : []) {
    if (c.kind !== 'airflow') continue;
    const key = `children.${name}.connection`;
    airflowConnections[c.connection] ??= resolveConnection(env, settings.connections, fileName, key, c.connection, 'airflow');
    checkAirflowVersion(env, settings.connections, fileName, name, c.connection, c.apiVersion);
  }
  const base = fromSettings(settings, fileName);
  return { ...base, connections, airflowConnections, http: { ...base.http, token: httpToken(env, full ? base.http : null) } };
}

/** Refuse at start-up an airflow child whose API version neither its config nor its connection URI says. */
function checkAirflowVersion(
  env: NodeJS.ProcessEnv, fileConnections: Record<string, string>, fileName: string | undefined, child: string, id: string, apiVersion: 1 | 2 | undefined,
): void {
  const [key, uri, source] = connectionSource(env, fileConnections, fileName, id)!;
  try {
    parseAirflowConnection(uri, id, apiVersion);
  } catch (err) {
    if (!(err instanceof ConnectionError)) throw err;
    throw new ConfigError(key, `connection "${id}" of child workflow ${child} ${err.problem}: ${err.help}`, source);
  }
}

/** Where the URI of connection `id` comes from, strongest first: L2FLOW_CONN_<ID>, AIRFLOW_CONN_<ID>, the file. */
function connectionSource(
  env: NodeJS.ProcessEnv, fileConnections: Record<string, string>, fileName: string | undefined, id: string,
): [key: string, value: string, source?: string] | undefined {
  const upper = id.toUpperCase();
  const sources: [key: string, value: string | undefined, source?: string][] = [
    [`L2FLOW_CONN_${upper}`, envValue(env, `L2FLOW_CONN_${upper}`)],
    [`AIRFLOW_CONN_${upper}`, envValue(env, `AIRFLOW_CONN_${upper}`)],
    [`connections.${id}`, fileConnections[id]?.trim() || undefined, fileName],
  ];
  return sources.find((s): s is [string, string, string?] => s[1] !== undefined);
}

/**
 * The URI of a connection id: L2FLOW_CONN_<ID>, then AIRFLOW_CONN_<ID>, then the config file's `connections`,
 * checked by the connection parser (SMTP's options by the mailer's reading of it). Errors name the variable (or
 * file key) the URI came from and never quote the URI: it may hold a password.
 */
function resolveConnection(
  env: NodeJS.ProcessEnv, fileConnections: Record<string, string>, fileName: string | undefined, idKey: string, id: string, kind: ConnectionKind,
): string {
  const upper = id.toUpperCase();
  const found = connectionSource(env, fileConnections, fileName, id);
  if (!found) {
    throw new ConfigError(
      `L2FLOW_CONN_${upper}`,
      `connection "${id}" (named by ${idKey}) is not set: export L2FLOW_CONN_${upper}=${CONNECTION_KINDS[kind].example} (AIRFLOW_CONN_${upper} works too, or connections.${id} in the L2FLOW_CONFIG file)`,
    );
  }
  const [key, uri, source] = found;
  try {
    // Run now so a bad URI stops start-up here rather than half-way through it.
    if (kind === 'smtp') parseSmtpConnection(uri);
    else parseConnection(uri, kind);
  } catch (err) {
    if (err instanceof ConnectionError) throw new ConfigError(key, `connection "${id}" ${err.problem}: ${err.help}`, source);
    throw new ConfigError(key, `connection "${id}": ${(err as Error).message}`, source);
  }
  return uri;
}

/** True when l2flow's own tables live in the warehouse (no separate state database): one pool, one transaction per memo. */
export function stateIsWarehouse(cfg: Pick<Config, 'connections'>): boolean {
  return cfg.connections.state === cfg.connections.dwh;
}

/**
 * What configures l2flow in this environment: the L2FLOW_CONFIG file, or the variable holding the warehouse
 * connection's URI (L2FLOW_CONN_<ID> / AIRFLOW_CONN_<ID> of connectionIds.dwh); null when nothing does, and
 * `l2flow start` then runs the demo.
 */
export function configuredBy(env: NodeJS.ProcessEnv): string | null {
  if (envValue(env, 'L2FLOW_CONFIG')) return 'L2FLOW_CONFIG';
  const id = (envValue(env, 'DWH_CONN_ID') ?? DEFAULT_SETTINGS.connectionIds.dwh).toUpperCase();
  return [`L2FLOW_CONN_${id}`, `AIRFLOW_CONN_${id}`].find((v) => envValue(env, v) !== undefined) ?? null;
}

/** Replace the password (and every token-like parameter) of a URI with ***, for logs and status output. */
export function redactUri(uri: string): string {
  return displayUri(uri);
}

/** Every connection URI of the configuration, Airflow's included: the logger scrubs their secrets from every line. */
export function connectionUris(cfg: Pick<Config, 'connections' | 'airflowConnections'>): string[] {
  return [...Object.values(cfg.connections), ...Object.values(cfg.airflowConnections)].filter(Boolean);
}

/** The configuration with every secret masked. */
export function describeConfig(cfg: Config): Record<string, unknown> {
  return {
    ...cfg,
    airflowConnections: Object.fromEntries(Object.entries(cfg.airflowConnections).map(([id, uri]) => [id, redactUri(uri)])),
    connections: {
      dwh: redactUri(cfg.connections.dwh),
      state: stateIsWarehouse(cfg) ? 'the warehouse (dwh)' : redactUri(cfg.connections.state),
      sap: cfg.connections.sap && redactUri(cfg.connections.sap),
      smtp: cfg.connections.smtp && redactUri(cfg.connections.smtp),
      ...(cfg.connections.dwhListen ? { dwhListen: redactUri(cfg.connections.dwhListen) } : {}),
    },
    http: { ...cfg.http, token: cfg.http.token && { name: cfg.http.token.name, secret: '***' } },
  };
}
