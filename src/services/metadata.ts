import type pg from 'pg';
import { notOwnerError, StepError, throwIfAborted, toErrorInfo } from '../lib/errors.js';
import { quoteQualified } from './db/index.js';
import { memoizedStatement, ownerOf, RECORDED, separateState, type Databases } from './db/index.js';
import type { Logger, RunFailure, StepContext, StepFn } from './types.js';

export interface MetadataOptions {
  /** l2flow's own tables (run, memos). */
  pool: pg.Pool;
  /** The warehouse (md tables, the load-id sequence, the flag table); the same pool object when l2flow's tables live there. */
  dwh: pg.Pool;
  /** layer_cd written to md.workflow and md.data_load_session. */
  layer?: string;
  /** Sequence that numbers load ids, schema-qualified. */
  loadIdSequence?: string;
  /** Link an operator follows from md.session_log to the run's logs. */
  logUrl?: (ctx: StepContext) => string;
  /** Written with `end` for the business date, so downstream workflows can wait on this run's success; null: none. */
  completionFlag?: { flagTable: string; flagCode: string } | null;
  logger: Logger;
}

export interface RegistrationResult {
  loadId: number;
  /** True when this run added the workflow to md.workflow. */
  workflowRegistered: boolean;
  resumed: boolean;
}

export interface EndResult {
  loadId: number;
  /** True when `end` wrote the completion flag (false when it is off or the row was already there). */
  flagged?: boolean;
  resumed: boolean;
}

export interface FailureRecordResult {
  /** False when the run failed before it had a load id, so there was no session to close. */
  recorded: boolean;
  resumed: boolean;
}

export interface Metadata {
  getLoadId: StepFn<StepContext, { loadId: number }>;
  workflowRegistration: StepFn<StepContext, RegistrationResult>;
  end: StepFn<StepContext, EndResult>;
  recordFailure: StepFn<StepContext & { failure: RunFailure }, FailureRecordResult>;
}

// The load id: one statement with one database (the run row and the sequence together).
const SQL = {
  // $3 the owner asserted (sql/008): a process whose run was taken over takes no number.
  assignLoadId: `update l2flow.run set load_id = coalesce(load_id, nextval($2::regclass))
                  where run_id = $1 and l2flow.assert_owner($1, $3) returning load_id`,
  // State ≠ warehouse: the sequence is the warehouse's, the run row l2flow's. A crash between the two wastes a number.
  readLoadId: `select load_id from l2flow.run where run_id = $1`,
  nextLoadId: `select nextval($1::regclass) as load_id`,
  keepLoadId: `update l2flow.run set load_id = coalesce(load_id, $2::bigint) where run_id = $1 and l2flow.assert_owner($1, $3) returning load_id`,
};

/*
 * The memoized steps' writes, each ONE statement of top-level data-modifying CTEs (see memoizedStatement): they all
 * see the statement's snapshot, so a "reopen" (update, else insert) reads its update's RETURNING, never the table.
 * Every write is guarded by FRESH (no memo recorded: a resumed step writes nothing). Each write tolerates warehouses
 * whose md tables lack the keys our migration creates: update-or-insert instead of relying on a conflict target, and
 * a bare `on conflict do nothing` for concurrent first registrations.
 */
const FRESH = `not exists (select 1 from ${RECORDED})`;
// $1 workflow_cd, $2 layer_cd, $3 load_id, $4 business_date, $5 run_id, $6 message
const REGISTER_WRITES = `registered as (
      insert into md.workflow (workflow_cd, layer_cd) select $1::text, $2::text
       where ${FRESH} and not exists (select 1 from md.workflow where workflow_cd = $1::text) on conflict do nothing returning 1),
    session_reopened as (
      update md.data_load_session set status_cd = 'start', business_date = $4::date, layer_cd = $2::text, finished_at = null
       where load_id = $3::bigint and ${FRESH} returning 1),
    session_opened as (
      insert into md.data_load_session (load_id, business_date, layer_cd, status_cd)
      select $3::bigint, $4::date, $2::text, 'start' where ${FRESH} and not exists (select 1 from session_reopened)),
    job_reopened as (
      update md.job_session set status_cd = 'start', run_id = $5::text, finished_at = null
       where load_id = $3::bigint and workflow_cd = $1::text and ${FRESH} returning 1),
    job_opened as (
      insert into md.job_session (load_id, run_id, workflow_cd, status_cd)
      select $3::bigint, $5::text, $1::text, 'start' where ${FRESH} and not exists (select 1 from job_reopened)),
    logged as (insert into md.session_log (load_id, level_cd, message) select $3::bigint, 'i', $6::text where ${FRESH})`;
const REGISTER_OUTPUT = `jsonb_build_object('loadId', $3::bigint, 'workflowRegistered', exists (select 1 from registered))`;
// $1 workflow_cd, $2 load_id, $3 status_cd, $4 level_cd, $5 message
const CLOSE_WRITES = `session_closed as (
      update md.data_load_session set status_cd = $3::text, finished_at = now() where load_id = $2::bigint and ${FRESH}),
    job_closed as (
      update md.job_session set status_cd = $3::text, finished_at = now() where load_id = $2::bigint and workflow_cd = $1::text and ${FRESH}),
    logged as (insert into md.session_log (load_id, level_cd, message) select $2::bigint, $4::text, $5::text where ${FRESH})`;

const TRANSIENT_SQLSTATE = /^(08|40|53|57P)/;

/** Warehouse metadata steps: load id, workflow/session registration, and closing the session on success or failure. */
export function createMetadata(opts: MetadataOptions): Metadata {
  const { pool, layer = 'l2', logger } = opts;
  const db: Databases = { state: pool, dwh: opts.dwh };
  const sequence = quoteQualified(opts.loadIdSequence ?? 'md.load_id_seq');
  const logUrl = opts.logUrl ?? ((ctx: StepContext) => `l2flow://runs/${encodeURIComponent(ctx.runId)}`);
  const q = (name: keyof typeof SQL, values: unknown[]) => ({ name: `l2flow_md_${name}`, text: SQL[name], values });
  // `end`'s writes: closing the session, and the completion flag ($6 flag_cd, $7 business date) in the same statement,
  // so the flag appears exactly when the run's success is recorded, never without it. `where not exists`: flag
  // tables rarely have a key. The table comes from the configuration (the statement's name carries a hash of its text).
  const flagTable = opts.completionFlag ? quoteQualified(opts.completionFlag.flagTable) : null;
  const endWrites = flagTable
    ? `${CLOSE_WRITES},
    flagged as (
      insert into ${flagTable} (flag_cd, bussines_date) select $6::text, $7::date
       where ${FRESH} and not exists (select 1 from ${flagTable} where flag_cd = $6::text and bussines_date = $7::date) returning 1)`
    : CLOSE_WRITES;
  const endOutput = `jsonb_build_object('loadId', $2::bigint, 'flagged', ${flagTable ? 'exists (select 1 from flagged)' : 'false'})`;

  /** Wrap anything thrown so the run's error names the step, the logical date and what to do. */
  async function step<T>(name: string, ctx: StepContext, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
    throwIfAborted(signal, name);
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StepError) throw err;
      const refused = notOwnerError(err);
      if (refused) throw refused;
      const info = toErrorInfo(err);
      const sqlstate = typeof info.details?.sqlstate === 'string' ? info.details.sqlstate : undefined;
      throw new StepError(
        'DB_ERROR',
        `${name} failed for ${ctx.workflowId} on ${ctx.logicalDate} (run ${ctx.runId}): ${info.message}; ` +
          'check the warehouse connection and the md tables, then clear the step to retry',
        { cause: err, retryable: sqlstate !== undefined && TRANSIENT_SQLSTATE.test(sqlstate), details: info.details },
      );
    }
  }

  function requireLoadId(name: string, ctx: StepContext): number {
    if (ctx.loadId === null) {
      throw new StepError('INTERNAL', `${name} of run ${ctx.runId} (${ctx.logicalDate}) has no load id: get_load_id must run first`);
    }
    return ctx.loadId;
  }

  /** The run's load id, taken from the sequence the first time; undefined when the run has no row. */
  async function assignLoadId(ctx: StepContext): Promise<{ load_id: string | null } | undefined> {
    const { runId } = ctx;
    if (!separateState(db)) return (await pool.query<{ load_id: string }>(q('assignLoadId', [runId, sequence, ownerOf(ctx)]))).rows[0];
    const known = (await pool.query<{ load_id: string | null }>(q('readLoadId', [runId]))).rows[0];
    if (!known || known.load_id !== null) return known;
    const next = (await db.dwh.query<{ load_id: string }>(q('nextLoadId', [sequence]))).rows[0]!.load_id;
    return (await pool.query<{ load_id: string }>(q('keepLoadId', [runId, next, ownerOf(ctx)]))).rows[0];
  }

  const getLoadId: Metadata['getLoadId'] = (ctx, signal) =>
    step('get_load_id', ctx, signal, async () => {
      const row = await assignLoadId(ctx);
      if (!row) {
        throw new StepError('INTERNAL', `get_load_id: run ${ctx.runId} (${ctx.logicalDate}) has no row in l2flow.run`);
      }
      const loadId = Number(row.load_id);
      logger.info({ runId: ctx.runId, loadId }, 'load id assigned');
      return { loadId };
    });

  const workflowRegistration: Metadata['workflowRegistration'] = (ctx, signal) =>
    step('workflow_registration', ctx, signal, async () => {
      const loadId = requireLoadId('workflow_registration', ctx);
      const message = `start -> task_id=workflow_registration, dag_id=${ctx.workflowId}, log_url=${logUrl(ctx)}`;
      const { output, resumed } = await memoizedStatement<Omit<RegistrationResult, 'resumed'>>(db, ctx, 'workflow_registration', {
        name: 'l2flow_md_register', writes: REGISTER_WRITES, output: REGISTER_OUTPUT,
        values: [ctx.workflowId, layer, loadId, ctx.businessDate, ctx.runId, message],
      }, { signal });
      logger.info({ runId: ctx.runId, loadId, resumed }, 'workflow registered, load session opened');
      return { ...output, resumed };
    });

  const end: Metadata['end'] = (ctx, signal) =>
    step('end', ctx, signal, async () => {
      const loadId = requireLoadId('end', ctx);
      const message = `successful -> task_id=end, dag_id=${ctx.workflowId}, log_url=${logUrl(ctx)}`;
      const { output, resumed } = await memoizedStatement<Omit<EndResult, 'resumed'>>(db, ctx, 'end', {
        name: 'l2flow_md_end', writes: endWrites, output: endOutput,
        values: [ctx.workflowId, loadId, 's', 'i', message, ...(opts.completionFlag ? [opts.completionFlag.flagCode, ctx.businessDate] : [])],
      }, { signal });
      logger.info({ runId: ctx.runId, loadId, resumed, flagged: output.flagged }, 'load session closed as successful');
      return { ...output, resumed };
    });

  const recordFailure: Metadata['recordFailure'] = (input, signal) =>
    step('record_failure', input, signal, async () => {
      const { failure, loadId } = input;
      if (loadId === null) return { recorded: false, resumed: false };
      const message = `failed -> task_id=${failure.step}, dag_id=${input.workflowId}, error=${failure.code}: ${failure.message}`;
      const { output, resumed } = await memoizedStatement<Omit<FailureRecordResult, 'resumed'>>(db, input, 'record_failure', {
        name: 'l2flow_md_failure', writes: CLOSE_WRITES, output: `jsonb_build_object('recorded', true)`,
        values: [input.workflowId, loadId, 'f', 'e', message],
      }, { signal });
      logger.info({ runId: input.runId, loadId, failedStep: failure.step, resumed }, 'load session closed as failed');
      return { ...output, resumed };
    });

  return { getLoadId, workflowRegistration, end, recordFailure };
}
