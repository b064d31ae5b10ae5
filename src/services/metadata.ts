import type pg from 'pg';
import { StepError, throwIfAborted, toErrorInfo } from '../lib/errors.js';
import { quoteQualified } from './db/index.js';
import { memoized, separateState, type Databases } from './db/index.js';
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

// Each statement tolerates warehouses whose md tables lack the keys our migration creates: update-or-insert
// instead of relying on a conflict target, and a bare `on conflict do nothing` for concurrent first registrations.
const SQL = {
  assignLoadId: `update l2flow.run set load_id = coalesce(load_id, nextval($2::regclass)) where run_id = $1 returning load_id`,
  // State ≠ warehouse: the sequence is the warehouse's, the run row l2flow's. A crash between the two wastes a number.
  readLoadId: `select load_id from l2flow.run where run_id = $1`,
  nextLoadId: `select nextval($1::regclass) as load_id`,
  keepLoadId: `update l2flow.run set load_id = coalesce(load_id, $2::bigint) where run_id = $1 returning load_id`,
  registerWorkflow: `insert into md.workflow (workflow_cd, layer_cd) select $1, $2
    where not exists (select 1 from md.workflow where workflow_cd = $1) on conflict do nothing`,
  openSession: `with reopened as (
      update md.data_load_session set status_cd = 'start', business_date = $2, layer_cd = $3, finished_at = null
       where load_id = $1 returning 1)
    insert into md.data_load_session (load_id, business_date, layer_cd, status_cd)
    select $1, $2, $3, 'start' where not exists (select 1 from reopened)`,
  openJob: `with reopened as (
      update md.job_session set status_cd = 'start', run_id = $2, finished_at = null
       where load_id = $1 and workflow_cd = $3 returning 1)
    insert into md.job_session (load_id, run_id, workflow_cd, status_cd)
    select $1, $2, $3, 'start' where not exists (select 1 from reopened)`,
  closeSession: `update md.data_load_session set status_cd = $2, finished_at = now() where load_id = $1`,
  closeJob: `update md.job_session set status_cd = $3, finished_at = now() where load_id = $1 and workflow_cd = $2`,
  log: `insert into md.session_log (load_id, level_cd, message) values ($1, $2, $3)`,
};

const TRANSIENT_SQLSTATE = /^(08|40|53|57P)/;

/** Warehouse metadata steps: load id, workflow/session registration, and closing the session on success or failure. */
export function createMetadata(opts: MetadataOptions): Metadata {
  const { pool, layer = 'l2', logger } = opts;
  const db: Databases = { state: pool, dwh: opts.dwh };
  const sequence = quoteQualified(opts.loadIdSequence ?? 'md.load_id_seq');
  const logUrl = opts.logUrl ?? ((ctx: StepContext) => `l2flow://runs/${encodeURIComponent(ctx.runId)}`);
  const q = (name: keyof typeof SQL, values: unknown[]) => ({ name: `l2flow_md_${name}`, text: SQL[name], values });
  // Not a named statement: the table comes from the configuration. `where not exists`: flag tables rarely have a key.
  const flagSql = opts.completionFlag
    ? `insert into ${quoteQualified(opts.completionFlag.flagTable)} (flag_cd, bussines_date) select $1, $2::date
        where not exists (select 1 from ${quoteQualified(opts.completionFlag.flagTable)} where flag_cd = $1 and bussines_date = $2::date)`
    : null;

  /** Wrap anything thrown so the run's error names the step, the logical date and what to do. */
  async function step<T>(name: string, ctx: StepContext, signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
    throwIfAborted(signal, name);
    try {
      return await fn();
    } catch (err) {
      if (err instanceof StepError) throw err;
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
  async function assignLoadId(runId: string): Promise<{ load_id: string | null } | undefined> {
    if (!separateState(db)) return (await pool.query<{ load_id: string }>(q('assignLoadId', [runId, sequence]))).rows[0];
    const known = (await pool.query<{ load_id: string | null }>(q('readLoadId', [runId]))).rows[0];
    if (!known || known.load_id !== null) return known;
    const next = (await db.dwh.query<{ load_id: string }>(q('nextLoadId', [sequence]))).rows[0]!.load_id;
    return (await pool.query<{ load_id: string }>(q('keepLoadId', [runId, next]))).rows[0];
  }

  const getLoadId: Metadata['getLoadId'] = (ctx, signal) =>
    step('get_load_id', ctx, signal, async () => {
      const row = await assignLoadId(ctx.runId);
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
      const { output, resumed } = await memoized(db, ctx, 'workflow_registration', async (client) => {
        const wf = await client.query(q('registerWorkflow', [ctx.workflowId, layer]));
        await client.query(q('openSession', [loadId, ctx.businessDate, layer]));
        await client.query(q('openJob', [loadId, ctx.runId, ctx.workflowId]));
        await client.query(q('log', [loadId, 'i', message]));
        return { loadId, workflowRegistered: wf.rowCount === 1 };
      }, { signal });
      logger.info({ runId: ctx.runId, loadId, resumed }, 'workflow registered, load session opened');
      return { ...output, resumed };
    });

  const end: Metadata['end'] = (ctx, signal) =>
    step('end', ctx, signal, async () => {
      const loadId = requireLoadId('end', ctx);
      const message = `successful -> task_id=end, dag_id=${ctx.workflowId}, log_url=${logUrl(ctx)}`;
      const { output, resumed } = await memoized(db, ctx, 'end', async (client) => {
        // In the memo's transaction: the flag appears exactly when the run's success is recorded, never without it.
        const flagged = flagSql ? (await client.query(flagSql, [opts.completionFlag!.flagCode, ctx.businessDate])).rowCount === 1 : false;
        await client.query(q('closeSession', [loadId, 's']));
        await client.query(q('closeJob', [loadId, ctx.workflowId, 's']));
        await client.query(q('log', [loadId, 'i', message]));
        return { loadId, flagged };
      }, { signal });
      logger.info({ runId: ctx.runId, loadId, resumed, flagged: output.flagged }, 'load session closed as successful');
      return { ...output, resumed };
    });

  const recordFailure: Metadata['recordFailure'] = (input, signal) =>
    step('record_failure', input, signal, async () => {
      const { failure, loadId } = input;
      if (loadId === null) return { recorded: false, resumed: false };
      const message = `failed -> task_id=${failure.step}, dag_id=${input.workflowId}, error=${failure.code}: ${failure.message}`;
      const { output, resumed } = await memoized(db, input, 'record_failure', async (client) => {
        await client.query(q('closeSession', [loadId, 'f']));
        await client.query(q('closeJob', [loadId, input.workflowId, 'f']));
        await client.query(q('log', [loadId, 'e', message]));
        return { recorded: true };
      }, { signal });
      logger.info({ runId: input.runId, loadId, failedStep: failure.step, resumed }, 'load session closed as failed');
      return { ...output, resumed };
    });

  return { getLoadId, workflowRegistration, end, recordFailure };
}
