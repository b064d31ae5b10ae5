import type pg from 'pg';
import { CLEARABLE_STEPS, planClear, type ClearPlan } from '../machines/clear-plan.js';
import type { StepId } from '../machines/steps.js';
import { withTransaction } from '../services/db/index.js';
import { writeAudit } from './audit.js';
import type { RunRow, RunStatus } from './run-store.js';
import type { ErrorCode, ErrorInfo } from '../lib/errors.js';

/**
 * Operator actions on finished runs, each with its audit record in the same transaction: clear (a new attempt of
 * the same run, from a step) and mark (set the outcome by hand, Airflow's "mark success" after a manual fix).
 */

export class RunActionError extends Error {
  override readonly name = 'RunActionError';
  constructor(
    /** NO_RUNS: nothing in the range; RUN_ACTIVE: a run is queued or running; BAD_STEP: not a step of the workflow. */
    readonly code: 'NO_RUNS' | 'RUN_ACTIVE' | 'BAD_STEP',
    message: string,
  ) {
    super(message);
  }
}

export interface ClearRequest {
  workflowId: string;
  from: string;
  /** Last logical date of the range, inclusive; default `from`. */
  to?: string;
  /** Default: each run's failed step (for a successful run: the first step). */
  fromStep?: string;
  dryRun?: boolean;
  reason?: string | null;
  actor: string;
}

export interface ClearedRun {
  logicalDate: string;
  runId: string;
  /** The status it had; it is `queued` now unless this was a dry run. */
  status: RunStatus;
  /** The attempt the clear starts. */
  attempt: number;
  plan: ClearPlan;
}

const RUN_KEYS = `run_id, logical_date::text, status, attempt, error`;

/** The step a clear starts from when none is given: the failed step, else the first that did not succeed. */
function defaultFromStep(run: Pick<RunRow, 'status' | 'error'>, succeeded: Set<string>): StepId {
  const failed = run.error?.details?.step;
  if (run.status !== 'success' && typeof failed === 'string' && (CLEARABLE_STEPS as string[]).includes(failed)) return failed as StepId;
  if (run.status === 'success') return CLEARABLE_STEPS[0]!;
  return CLEARABLE_STEPS.find((s) => !succeeded.has(s)) ?? CLEARABLE_STEPS[0]!;
}

/** Clear the finished runs of a date range: each becomes `queued` again as its next attempt (same run id, same load id). */
export async function clearRuns(pool: pg.Pool, r: ClearRequest): Promise<ClearedRun[]> {
  if (r.fromStep !== undefined && !(CLEARABLE_STEPS as string[]).includes(r.fromStep)) {
    throw new RunActionError('BAD_STEP', `"${r.fromStep}" is not a step that can be cleared: write one of ${CLEARABLE_STEPS.join(', ')}`);
  }
  const to = r.to ?? r.from;
  return withTransaction(pool, async (client) => {
    const { rows: runs } = await client.query<Pick<RunRow, 'run_id' | 'logical_date' | 'status' | 'attempt' | 'error'>>(
      `select ${RUN_KEYS} from l2flow.run where workflow_id = $1 and logical_date between $2 and $3 order by logical_date for update`,
      [r.workflowId, r.from, to],
    );
    const range = r.from === to ? r.from : `${r.from} .. ${to}`;
    if (runs.length === 0) throw new RunActionError('NO_RUNS', `no runs for ${range}: nothing to clear (queue one with \`l2flow trigger --date ${r.from}\`)`);
    const active = runs.filter((x) => x.status === 'queued' || x.status === 'running');
    if (active.length > 0) {
      throw new RunActionError('RUN_ACTIVE', `${active.map((x) => `${x.logical_date} is ${x.status}`).join(', ')}: a clear re-runs finished runs only; wait for it to end or \`l2flow cancel --date ${active[0]!.logical_date}\` first`);
    }
    // Each step's latest record over all attempts: a step skipped by a later attempt keeps its earlier success.
    const { rows: latest } = await client.query<{ run_id: string; step: string; status: string }>(
      `select distinct on (run_id, step) run_id, step, status from l2flow.step where run_id = any($1)
        order by run_id, step, attempt desc, try_number desc`,
      [runs.map((x) => x.run_id)],
    );
    const cleared = runs.map((run): ClearedRun => {
      const succeeded = new Set(latest.filter((l) => l.run_id === run.run_id && l.status === 'success').map((l) => l.step));
      const plan = planClear((r.fromStep as StepId | undefined) ?? defaultFromStep(run, succeeded), succeeded);
      return { logicalDate: run.logical_date, runId: run.run_id, status: run.status, attempt: run.attempt + 1, plan };
    });
    if (r.dryRun) return cleared;
    for (const c of cleared) {
      // Queued with a fresh snapshot: the claim loop (woken by the status NOTIFY) starts the new attempt at start_at.
      await client.query(
        `update l2flow.run set status = 'queued', attempt = $2, start_at = $3, snapshot = null, error = null, current_step = null,
                owner = null, started_at = null, finished_at = null, updated_at = now()
          where run_id = $1`,
        [c.runId, c.attempt, c.plan.startAt],
      );
    }
    await writeAudit(client, {
      action: 'clear',
      workflowId: r.workflowId,
      logicalDates: cleared.map((c) => c.logicalDate),
      runIds: cleared.map((c) => c.runId),
      reason: r.reason,
      actor: r.actor,
      details: { runs: cleared.map((c) => ({ runId: c.runId, was: c.status, attempt: c.attempt, fromStep: c.plan.fromStep, rerun: c.plan.rerun })) },
    });
    return cleared;
  });
}

export interface MarkRequest {
  workflowId: string;
  logicalDate: string;
  status: 'success' | 'failed';
  reason?: string | null;
  actor: string;
}

/**
 * Set a run's outcome by hand. A running run is stopped wherever it runs: the status change is announced on
 * l2flow_run and its process stops the run (its own writes are refused from then on). Returns the status it had.
 */
export async function markRun(pool: pg.Pool, r: MarkRequest): Promise<{ runId: string; was: RunStatus; changed: boolean }> {
  return withTransaction(pool, async (client) => {
    const { rows } = await client.query<Pick<RunRow, 'run_id' | 'status'>>(
      `select run_id, status from l2flow.run where workflow_id = $1 and logical_date = $2 for update`,
      [r.workflowId, r.logicalDate],
    );
    const run = rows[0];
    if (!run) throw new RunActionError('NO_RUNS', `no run for ${r.logicalDate}: nothing to mark (queue one with \`l2flow trigger --date ${r.logicalDate}\`)`);
    if (run.status === r.status) return { runId: run.run_id, was: run.status, changed: false };
    const error: ErrorInfo | null = r.status === 'failed' ? { code: 'MARKED_FAILED' satisfies ErrorCode, message: `marked failed by ${r.actor}${r.reason ? `: ${r.reason}` : ''}` } : null;
    await client.query(
      `update l2flow.run set status = $2, error = $3, current_step = null, finished_at = coalesce(finished_at, now()), updated_at = now()
        where run_id = $1`,
      [run.run_id, r.status, error],
    );
    // Steps interrupted by the mark would otherwise show as running forever.
    await client.query(
      `update l2flow.step set status = 'cancelled', finished_at = now() where run_id = $1 and status = 'running'`,
      [run.run_id],
    );
    await writeAudit(client, {
      action: 'mark',
      workflowId: r.workflowId,
      logicalDates: [r.logicalDate],
      runIds: [run.run_id],
      reason: r.reason,
      actor: r.actor,
      details: { status: r.status, was: run.status },
    });
    return { runId: run.run_id, was: run.status, changed: true };
  });
}
