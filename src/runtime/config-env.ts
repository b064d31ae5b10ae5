import type { z } from 'zod';
import { quote } from './config-file.js';

/**
 * The environment's part of the configuration: one table of variable → settings key. A variable's value is
 * written onto the file's settings before the one schema checks them, so it obeys the same rules, and an error
 * about it names the variable.
 */

type EnvValue = 'text' | 'number' | 'list' | 'boolean';

interface EnvSetting {
  /** The settings key (as the L2FLOW_CONFIG file writes it). */
  key: string;
  type: EnvValue;
  /** An example for error messages when the setting has no default to show. */
  example?: string;
}

/** Every environment variable that sets a setting, and the settings key it sets. */
export const ENV_KEYS: Readonly<Record<string, EnvSetting>> = {
  L2FLOW_TIMEZONE: { key: 'workflow.timezone', type: 'text' },
  L2FLOW_START_DATE: { key: 'workflow.startDate', type: 'text' },
  L2FLOW_MAX_ACTIVE_RUNS: { key: 'workflow.maxActiveRuns', type: 'number' },
  L2FLOW_POOL_SIZE: { key: 'workflow.poolSize', type: 'number' },
  L2FLOW_CHILD_CONNECTIONS: { key: 'workflow.childConnections', type: 'number' },
  L2FLOW_CLAIM_INTERVAL_SECONDS: { key: 'workflow.claimIntervalSeconds', type: 'number' },
  L2FLOW_RUN_TIMEOUT_SECONDS: { key: 'workflow.runTimeoutSeconds', type: 'number', example: '86400' },
  L2FLOW_EXPECTED_BY: { key: 'workflow.expectedBy', type: 'text', example: '07:30' },
  L2FLOW_FLAG_POKE_INTERVAL_SECONDS: { key: 'sensors.wait_for_l2_full_load.pokeIntervalSeconds', type: 'number' },
  L2FLOW_FLAG_NOTIFY: { key: 'sensors.wait_for_l2_full_load.notify', type: 'boolean', example: 'false' },
  DWH_CONN_ID: { key: 'connectionIds.dwh', type: 'text' },
  STATE_CONN_ID: { key: 'connectionIds.state', type: 'text' },
  SAP_CONN_ID: { key: 'connectionIds.sap', type: 'text' },
  SMTP_CONN_ID: { key: 'connectionIds.smtp', type: 'text' },
  EMAIL_RECIPIENTS: { key: 'email.recipients', type: 'list', example: 'dwh-team@bank.example,oncall@bank.example' },
  EMAIL_FROM: { key: 'email.from', type: 'text' },
  L2FLOW_LOG_LEVEL: { key: 'logLevel', type: 'text' },
  L2FLOW_LOG_FORMAT: { key: 'logFormat', type: 'text', example: 'json' },
  // Schedules: an operator pauses or moves them without editing the file.
  L2FLOW_END_DATE: { key: 'workflow.endDate', type: 'text', example: '2025-12-31' },
  L2FLOW_CRON: { key: 'schedule.cron.expression', type: 'text', example: "'0 3 * * *'" },
  L2FLOW_CRON_ENABLED: { key: 'schedule.cron.enabled', type: 'boolean', example: 'false' },
  L2FLOW_CRON_CATCHUP: { key: 'schedule.cron.catchup', type: 'boolean', example: 'true' },
  L2FLOW_ON_FLAG: { key: 'schedule.onFlag.enabled', type: 'boolean', example: 'true' },
  L2FLOW_MANUAL: { key: 'schedule.manual', type: 'boolean', example: 'true' },
  // The HTTP server; its token (L2FLOW_API_TOKEN) is a secret and is read apart, in config.ts.
  L2FLOW_HTTP_ENABLED: { key: 'http.enabled', type: 'boolean', example: 'false' },
  L2FLOW_HTTP_HOST: { key: 'http.host', type: 'text' },
  L2FLOW_HTTP_PORT: { key: 'http.port', type: 'number' },
};

/** An environment variable's value; unset and empty count as not given. */
export function envValue(env: NodeJS.ProcessEnv, variable: string): string | undefined {
  const v = env[variable]?.trim();
  return v ? v : undefined;
}

function typed(value: string, type: EnvValue): unknown {
  if (type === 'list') return value.split(',');
  // Not a number: left as text, so the schema says what is wrong with it.
  if (type === 'number') return Number.isFinite(Number(value)) ? Number(value) : value;
  if (type === 'boolean') return value === 'true' ? true : value === 'false' ? false : value;
  return value;
}

/** Settings read from the environment: the variable each settings key came from, and its text as given. */
export type EnvSources = Map<string, { variable: string; text: string }>;

/**
 * Write every variable of ENV_KEYS that is set onto `raw` (the file's settings, not yet checked), in place.
 * A key whose parent in the file is not a mapping is left alone: the schema reports the file's mistake.
 */
export function overlayEnv(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): EnvSources {
  const sources: EnvSources = new Map();
  for (const [variable, setting] of Object.entries(ENV_KEYS)) {
    const text = envValue(env, variable);
    if (text === undefined) continue;
    const parts = setting.key.split('.');
    let at: Record<string, unknown> | undefined = raw;
    for (const part of parts.slice(0, -1)) {
      const next: unknown = at[part] ?? (at[part] = {});
      at = next !== null && typeof next === 'object' && !Array.isArray(next) ? (next as Record<string, unknown>) : undefined;
      if (!at) break;
    }
    if (!at) continue;
    at[parts.at(-1)!] = typed(text, setting.type);
    sources.set(setting.key, { variable, text });
  }
  return sources;
}

/** The environment variable (and its text) a schema issue is about, when its key came from the environment. */
export function envSourceOf(issue: z.core.$ZodIssue, sources: EnvSources): { variable: string; text: string } | undefined {
  for (let n = issue.path.length; n > 0; n--) {
    const found = sources.get(issue.path.slice(0, n).join('.'));
    if (found) return found;
  }
  return undefined;
}

/** The message of a schema issue about an environment variable: its value, what is wrong, and an example to write. */
export function envIssueMessage(issue: z.core.$ZodIssue, source: { variable: string; text: string }, example: string): string {
  // Refinements already quote the value and say what to write.
  if (issue.code === 'custom') return issue.message;
  const problem =
    issue.code === 'invalid_type'
      ? issue.expected === 'int'
        ? 'is not a whole number'
        : `is not ${issue.expected === 'number' ? 'a number' : `a ${issue.expected}`}`
      : issue.message;
  return `${quote(source.text)} ${problem}: write e.g. ${source.variable}=${example}`;
}
