import { z } from 'zod';
import { isIsoDate, isTimeOfDay, isTimeZone } from '../lib/dates.js';
import { STEP_IDS, type StepId } from '../machines/steps.js';
import { isQualifiedName, placeholdersIn } from '../services/db/index.js';
import { quote } from './config-file.js';
import { MAX_TIMER_MS } from '../lib/time.js';
import { cronProblem } from '../lib/cron.js';
import { CLEARABLE_STEPS } from '../machines/clear-plan.js';

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

const AIRFLOW_ID_HELP = 'must be an Airflow DAG id (letters, digits, _ . -), e.g. wf_data_preparation_for_reports';

/** A DAG in Airflow, triggered through its REST API (services/children/airflow); the poke backoff also paces API retries. */
const airflowChildSchema = z.strictObject({
  kind: z.literal('airflow'),
  dagId: z.string({ error: AIRFLOW_ID_HELP }).trim().regex(/^[A-Za-z0-9_.-]{1,250}$/, { error: AIRFLOW_ID_HELP }),
  connection: z
    .string({ error: 'must be a connection id, e.g. airflow_default (its URI: L2FLOW_CONN_<ID> or AIRFLOW_CONN_<ID>)' })
    .trim()
    .min(1, { error: 'must be a connection id, e.g. airflow_default' }),
  apiVersion: z.union([z.literal(1), z.literal(2)], { error: 'must be 1 (Airflow 2, /api/v1) or 2 (Airflow 3, /api/v2)' }).optional(),
  conf: z.record(z.string(), z.unknown(), { error: 'must be a mapping (the DAG run conf), e.g. { source: l2flow }' }).default({}),
  resetDagRun: z.boolean({ error: 'must be true or false' }).default(true),
  waitForCompletion: z.boolean({ error: 'must be true or false' }).default(true),
  pokeIntervalSeconds: positive('seconds', { timer: true }).default(60),
  maxPokeIntervalSeconds: positive('seconds', { timer: true }).default(600),
  timeoutSeconds: positive('seconds', { timer: true }).optional(),
  requestTimeoutSeconds: positive('seconds', { timer: true }).default(30),
  maxTries: z.number().int().positive({ error: 'must be 1 or more tries' }).default(5),
}).refine((c) => c.maxPokeIntervalSeconds >= c.pokeIntervalSeconds, {
  error: 'maxPokeIntervalSeconds must be at least pokeIntervalSeconds', path: ['maxPokeIntervalSeconds'],
});

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
    airflowChildSchema,
  ],
  {
    error: (iss) =>
      `${iss.input && typeof iss.input === 'object' && 'kind' in iss.input ? `unknown child kind ${quote((iss.input as { kind: unknown }).kind)}` : 'kind is missing'}: write kind: sql (with statement: "call ...", run in the warehouse), kind: airflow (with dagId and connection) or kind: builtin (with name: sys_kill_all_session_pg)`,
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

const calendarDate = z.string().refine(isIsoDate, { error: (iss) => `${quote(iss.input)} is not a calendar date: write YYYY-MM-DD, e.g. 2023-12-22` });
const onOff = z.boolean({ error: 'must be true or false' });

// ---- schedule: how runs are created (manual, cron, onFlag; combinable). See README "Schedules". ----
const CRON_HELP = 'write 5 fields (minute hour day month weekday), 6 with seconds first, or a preset, e.g. "0 3 * * *" or "@daily"';
/** Each schedule's own date window; it narrows workflow.startDate/endDate, never widens them. */
const scheduleWindow = { startDate: calendarDate.optional(), endDate: calendarDate.optional() };
const scheduleSchema = section({
  /** Runs queued by `l2flow trigger` / trigger(); false refuses them. */
  manual: onOff.default(true),
  cron: z
    .strictObject({
      expression: z.string({ error: CRON_HELP }).refine((e) => cronProblem(e) === null, {
        error: (iss) => `${quote(iss.input)} is not a cron expression (${cronProblem(String(iss.input))}): ${CRON_HELP}`,
      }),
      /** false: due dates are recorded as skipped ('disabled') and no run is created. */
      enabled: onOff.default(true),
      /** false: of the dates due at once, only the latest gets a run; the others are recorded as skipped. */
      catchup: onOff.default(false),
      ...scheduleWindow,
    })
    .nullable()
    .default(null),
  onFlag: section({
    enabled: onOff.default(false),
    /** At start, flags this many days older than the newest run are still looked at for missing runs. */
    lookbackDays: z.number().int().nonnegative().max(366).default(7),
    ...scheduleWindow,
  }),
});
// ---- end schedule ----
/**
 * A step's retries (Airflow's retries, retry_delay, retry_exponential_backoff, max_retry_delay): the wait after try n
 * is min(maxRetryDelaySeconds, retryDelaySeconds × 2^(n−1)). `workflow` holds the defaults of every step (0 retries,
 * as the original DAG); `steps.<step_id>` overrides them key by key.
 */
const retryKeys = {
  retries: z.number({ error: 'must be a whole number of retries, e.g. 2' }).int({ error: 'must be a whole number of retries, e.g. 2' }).nonnegative({ error: 'must be 0 or more' }),
  retryDelaySeconds: positive('seconds', { timer: true }),
  maxRetryDelaySeconds: positive('seconds', { timer: true }),
};
const stepSettings = z.strictObject({
  retries: retryKeys.retries.optional(),
  retryDelaySeconds: retryKeys.retryDelaySeconds.optional(),
  maxRetryDelaySeconds: retryKeys.maxRetryDelaySeconds.optional(),
});
/** One optional entry per step that can be retried: an unknown step id is an unknown setting, listed with the valid ones. */
const stepsShape = Object.fromEntries(CLEARABLE_STEPS.map((step) => [step, stepSettings.optional()])) as Record<StepId, z.ZodOptional<typeof stepSettings>>;

/** Every setting, its rule and its default. */
export const settingsSchema = z.strictObject({
  workflow: section({
    timezone: z
      .string()
      .refine(isTimeZone, { error: (iss) => `${quote(iss.input)} is not an IANA time zone: write e.g. Asia/Tashkent or UTC` })
      .default('Asia/Tashkent'),
    startDate: calendarDate.default('2023-12-22'),
    /** Last logical date any schedule creates; none by default. */
    endDate: calendarDate.optional(),
    maxActiveRuns: z.number().int().positive().default(20),
    /** Connections of the runtime's database pool. */
    poolSize: z.number().int().positive().default(10),
    childConnections: z.number().int().positive().default(10),
    claimIntervalSeconds: z.number().positive().max(3600).default(2),
    /** None by default, as in the original DAG. */
    runTimeoutSeconds: z.number().positive().max(MAX_TIMER_S).optional(),
    /** Retries of every step unless `steps.<step_id>` says otherwise; 0 as in the original DAG. */
    retries: retryKeys.retries.default(0),
    /** Airflow's default retry_delay. */
    retryDelaySeconds: retryKeys.retryDelaySeconds.default(300),
    maxRetryDelaySeconds: retryKeys.maxRetryDelaySeconds.default(3600),
    /** When the run should have succeeded (time of day on the logical date); a late run gets one 'late' mail. */
    expectedBy: timeOfDay.optional(),
    /** The same per step: a step not done by its time gets one 'late' mail of its own. */
    stepExpectedBy: stepTimes,
  }),
  connections: z.record(z.string(), z.string()).default({}),
  /** The connection id of each outside system; its URI is looked up by id (see config.ts). */
  connectionIds: section({
    dwh: z.string().min(1).default('dwh'),
    /** l2flow's own tables (schema l2flow); when this id has no URI, they live in the warehouse. */
    state: z.string().min(1).default('state'),
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
      /** false: no trigger on the flag table and no LISTEN for it; the sensor sees a flag on its poll alone. */
      notify: onOff.default(true),
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
  /** Per-step settings, by the original task id. */
  steps: section(stepsShape),
  logLevel: z.enum(LOG_LEVELS).default('info'),
  /** pretty (human-readable) or json; unset: pretty when stdout is a terminal, else json. */
  logFormat: z.enum(['pretty', 'json'], { error: 'must be pretty or json' }).optional(),
  schedule: scheduleSchema,
  /** On success, a row in the flag table for the business date, committed with the `end` step. Opt-in. */
  completionFlag: section({
    enabled: z.boolean({ error: 'must be true or false' }).default(false),
    flagCode: z.string().min(1).default('l2_datasets_load_successful'),
  }),
  // ---- http: the HTTP server of `l2flow run` and of createL2flow().start() (src/runtime/http). ----
  http: section({
    enabled: onOff.default(true),
    /** Loopback by default; any other address needs L2FLOW_API_TOKEN (checked in config.ts). */
    host: z.string({ error: 'must be an address to bind, e.g. 127.0.0.1' }).trim().min(1, { error: 'must be an address to bind, e.g. 127.0.0.1' }).default('127.0.0.1'),
    /** 0: any free port (the bound URL is logged and given by the API). */
    port: z.number({ error: 'must be a port number 0-65535, e.g. 8780' }).int({ error: 'must be a whole port number, e.g. 8780' })
      .min(0, { error: 'must be a port number 0-65535, e.g. 8780' }).max(65535, { error: 'must be a port number 0-65535, e.g. 8780' }).default(8780),
  }),
  // ---- end http ----
});

/** The settings after parsing: every default filled in. */
export type Settings = z.output<typeof settingsSchema>;
/** The settings as a user writes them (the L2FLOW_CONFIG file, or createL2flow's `config` object). */
export type FileConfig = z.input<typeof settingsSchema>;
