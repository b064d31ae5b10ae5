import { z } from 'zod';
import { isIsoDate, isTimeOfDay, isTimeZone } from '../lib/dates.js';
import { STEP_IDS, type StepId } from '../machines/steps.js';
import { isQualifiedName, placeholdersIn } from '../services/db/index.js';
import { quote } from './config-file.js';
import { MAX_TIMER_MS } from '../lib/time.js';

/**
 * The one schema of l2flow's settings, written as the L2FLOW_CONFIG file writes them. It holds every default:
 * parsing `{}` gives the configuration of a deployment that sets nothing. The environment is overlaid onto the
 * file's keys before parsing (config-env.ts), so both obey the same rules.
 */

export const DAY_S = 24 * 3600;

const MAX_TIMER_S = Math.floor(MAX_TIMER_MS / 1000);

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** The builtin child every deployment has; the file may configure it further. */
const BUILTIN_CHILDREN = { sys_kill_all_session_pg: { kind: 'builtin', name: 'sys_kill_all_session_pg', idleSeconds: 600 } } as const;
/** Pools the workflow's steps use; the file may resize them or add others. */
const REQUIRED_POOLS = { dwh_l2: { slots: 1 } };

/** A positive number of `what`; `timer` caps it at the longest delay a Node timer takes (for values that end up in one). */
const positive = (what: 'seconds' | 'milliseconds', opts: { timer?: boolean } = {}) => {
  const n = z.number().positive({ error: `must be greater than 0 ${what}` });
  if (!opts.timer) return n;
  const max = what === 'seconds' ? MAX_TIMER_S : MAX_TIMER_MS;
  return n.max(max, { error: `must be at most ${max} ${what} (about 24 days, the longest timer Node.js supports)` });
};


const SQL_STATEMENT_HELP = 'must be a SQL statement, e.g. "call l2.my_proc($1::date, $2::bigint)"';
const WHOLE_SECONDS = 'must be a whole number of seconds, e.g. 300';

const childSchema = z.discriminatedUnion(
  'kind',
  [
    z.strictObject({
      kind: z.literal('sql'),
      statement: z
        .string({ error: SQL_STATEMENT_HELP })
        .trim()
        .min(1, { error: SQL_STATEMENT_HELP })
        .refine((st) => placeholdersIn(st).every((n) => n >= 1 && n <= 2), {
          error: 'may reference only $1 (the logical date) and $2 (the load id): remove the other $n placeholders',
        }),
      timeoutSeconds: positive('seconds', { timer: true }).optional(),
      transactional: z.boolean({ error: 'must be true or false' }).default(true),
    }),
    z.strictObject({
      kind: z.literal('builtin'),
      name: z.literal('sys_kill_all_session_pg', { error: 'must be sys_kill_all_session_pg, the only builtin child' }),
      idleSeconds: z.number({ error: WHOLE_SECONDS }).int({ error: WHOLE_SECONDS }).nonnegative({ error: 'must be 0 or more seconds' }).default(600),
      timeoutSeconds: positive('seconds', { timer: true }).optional(),
    }),
  ],
  {
    error: (iss) =>
      `${iss.input && typeof iss.input === 'object' && 'kind' in iss.input ? `unknown child kind ${quote((iss.input as { kind: unknown }).kind)}` : 'kind is missing'}: write kind: sql (with statement: "call ...", run in the warehouse) or kind: builtin (with name: sys_kill_all_session_pg)`,
  },
);

/** A time of day on the logical date, in the workflow timezone. */
const timeOfDay = z.string().refine(isTimeOfDay, {
  error: (iss) => `${quote(iss.input)} is not a time of day: write HH:MM or HH:MM:SS (24-hour clock, workflow timezone), e.g. "07:30"`,
});

/** Per-step expected-by times, keyed by the step ids operators know. */
const stepTimes = z
  .record(z.string(), timeOfDay)
  .default({})
  .refine((r) => Object.keys(r).every((k) => (STEP_IDS as string[]).includes(k)), {
    error: (iss) => `names an unknown step (${Object.keys(iss.input as object).filter((k) => !(STEP_IDS as string[]).includes(k)).join(', ')}): the steps are ${STEP_IDS.join(', ')}`,
  })
  .transform((r) => r as Partial<Record<StepId, string>>);

/** A schema-qualified table or view name, checked by the same function that quotes it for SQL. */
const qualifiedName = (what: string, example: string) =>
  z.string().refine(isQualifiedName, { error: (iss) => `${quote(iss.input)} is not a ${what} name: write schema.${what}, e.g. ${example}` });

const emailAddress = z.string().refine((r) => /^[^@\s;<>]+@[^@\s;<>]+$/.test(r), {
  error: (iss) => `${quote(iss.input)} is not an e-mail address: write a comma-separated list like a@bank.example,b@bank.example`,
});

/** A mapping of settings; absent, it is parsed as {} so that its keys' defaults apply. */
const section = <T extends z.core.$ZodLooseShape>(shape: T) => z.strictObject(shape).prefault({} as never);

/** Every setting, its rule and its default. */
export const settingsSchema = z.strictObject({
  workflow: section({
    timezone: z
      .string()
      .refine(isTimeZone, { error: (iss) => `${quote(iss.input)} is not an IANA time zone: write e.g. Asia/Tashkent or UTC` })
      .default('Asia/Tashkent'),
    startDate: z
      .string()
      .refine(isIsoDate, { error: (iss) => `${quote(iss.input)} is not a calendar date: write YYYY-MM-DD, e.g. 2023-12-22` })
      .default('2023-12-22'),
    maxActiveRuns: z.number().int().positive().default(20),
    /** Connections of the runtime's database pool. */
    poolSize: z.number().int().positive().default(10),
    childConnections: z.number().int().positive().default(10),
    claimIntervalSeconds: z.number().positive().max(3600).default(2),
    /** None by default, as in the original DAG. */
    runTimeoutSeconds: z.number().positive().max(MAX_TIMER_S).optional(),
    /** When the run should have succeeded (time of day on the logical date); a late run gets one 'late' mail. */
    expectedBy: timeOfDay.optional(),
    /** The same per step: a step not done by its time gets one 'late' mail of its own. */
    stepExpectedBy: stepTimes,
  }),
  connections: z.record(z.string(), z.string()).default({}),
  /** The connection id of each outside system; its URI is looked up by id (see config.ts). */
  connectionIds: section({
    dwh: z.string().min(1).default('dwh'),
    sap: z.string().min(1).default('sap_conn'),
    smtp: z.string().min(1).default('smtp_default'),
  }),
  email: section({
    recipients: z
      .array(z.string())
      .default([])
      .transform((rs) => rs.map((r) => r.trim()).filter(Boolean))
      .pipe(z.array(emailAddress)),
    from: z.string().default('l2flow@localhost'),
  }),
  sensors: section({
    wait_for_l2_full_load: section({
      flagTable: qualifiedName('table', 'md.dwh_flag').default('md.dwh_flag'),
      flagCode: z.string().min(1).default('l1_to_l2_load_successfull'),
      pokeIntervalSeconds: positive('seconds', { timer: true }).default(60),
      timeoutSeconds: positive('seconds').default(7 * DAY_S),
    }),
    wait_for_success_end: section({
      pokeIntervalSeconds: positive('seconds', { timer: true }).default(100),
      timeoutSeconds: positive('seconds').default(7 * DAY_S),
      executionDeltaDays: z.number().int().positive().default(1),
      /** No run at all for the previous date: keep waiting (Airflow) or pass. */
      whenMissing: z.enum(['wait', 'pass'], { error: 'must be wait or pass' }).default('wait'),
      /** The previous date's run failed (or was cancelled): keep waiting (Airflow) or fail at once. */
      whenFailed: z.enum(['wait', 'fail'], { error: 'must be wait or fail' }).default('wait'),
      /** Waiting behind a failed previous run for this long sends one 'blocked' mail; unset: no such mail. */
      blockedMailAfterSeconds: positive('seconds').optional(),
    }),
  }),
  children: z
    .record(z.string(), childSchema)
    .default({})
    .transform((cs): Record<string, z.output<typeof childSchema>> => ({ ...BUILTIN_CHILDREN, ...cs })),
  pools: z
    .record(z.string(), z.strictObject({ slots: z.number().int().positive() }))
    .default({})
    .transform((ps) => ({ ...REQUIRED_POOLS, ...ps })),
  sap: section({
    viewName: qualifiedName('view', 'wk_export.ds_client_segmentation_last_v').default('wk_export.ds_client_segmentation_last_v'),
    connectTimeoutSeconds: positive('seconds', { timer: true }).default(10),
    timeoutSeconds: positive('seconds', { timer: true }).default(30),
    maxTries: z.number().int().positive().default(5),
    retryBaseDelayMs: positive('milliseconds', { timer: true }).default(1000),
    retryMaxDelayMs: positive('milliseconds', { timer: true }).default(60_000),
  }),
  logLevel: z.enum(LOG_LEVELS).default('info'),
  /** On success, a row in the flag table for the business date, committed with the `end` step. Opt-in. */
  completionFlag: section({
    enabled: z.boolean({ error: 'must be true or false' }).default(false),
    flagCode: z.string().min(1).default('l2_datasets_load_successful'),
  }),
});

/** The settings after parsing: every default filled in. */
export type Settings = z.output<typeof settingsSchema>;
/** The settings as a user writes them (the L2FLOW_CONFIG file, or createL2flow's `config` object). */
export type FileConfig = z.input<typeof settingsSchema>;
