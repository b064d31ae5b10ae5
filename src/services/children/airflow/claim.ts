import type pg from 'pg';
import { STEP_CHILDREN } from '../../../machines/steps.js';
import { abortableSleep } from '../../../lib/time.js';
import { readMemo, writeMemo } from '../../db/index.js';
import type { StepContext } from '../../types.js';

/**
 * The claim of a DAG run: a step memo (l2flow.step_memo, key `child:<name>:dag_run`) saying "this step of this run
 * attempt owns DAG run <id>", written before the trigger. It is what tells a re-invocation after a crash (XState
 * runs a restored in-flight step again) from a first invocation meeting a DAG run someone else left: the first
 * re-attaches whatever the run's state, only the second may clear it (resetDagRun). It is released when the step
 * ends for good without success (failed DAG run, timeout, cancel), so a retry of the step may take the run over.
 */
export interface DagRunClaim {
  dagRunId: string;
  /** Epoch ms of the first claim: the child's timeout counts from here, across restarts. */
  claimedAt: number;
}

type Key = Pick<StepContext, 'runId' | 'attempt'>;

const claimStep = (child: string) => `child:${child}:dag_run`;

/** The claim of `child` in this run attempt, if one was written. */
export function readClaim(pool: pg.Pool, ctx: Key, child: string): Promise<DagRunClaim | undefined> {
  return readMemo<DagRunClaim>(pool, ctx, claimStep(child));
}

/** Claim `dagRunId` for `child`; an existing claim (a concurrent or earlier writer's) is kept and returned. */
export async function writeClaim(pool: pg.Pool, ctx: Key, child: string, dagRunId: string): Promise<DagRunClaim> {
  const claim: DagRunClaim = { dagRunId, claimedAt: Date.now() };
  if (await writeMemo(pool, ctx, claimStep(child), claim)) return claim;
  return (await readClaim(pool, ctx, child)) ?? claim;
}

/** Give the DAG run up: the next invocation of the step in this attempt treats it as a run it did not trigger. */
export async function releaseClaim(pool: pg.Pool, ctx: Key, child: string): Promise<void> {
  await pool.query({
    name: 'l2flow_airflow_claim_release',
    text: 'delete from l2flow.step_memo where run_id = $1 and step = $2 and attempt = $3',
    values: [ctx.runId, claimStep(child), ctx.attempt],
  });
}

const VERDICT_POLL_MS = 100;

/**
 * Why the step's signal fired, as the run's own record tells it once the snapshot writer has caught up: true when
 * the step was stopped for good (operator cancel, run timeout, a sibling branch failing: its l2flow.step row is no
 * longer running, or the run ended), false when this process let the run go (shutdown, take-over) and the step, still
 * `running` in the record, will be resumed elsewhere. A call outside any workflow run (no l2flow.run row) is stopped
 * for good. Only a stop for good may fail the Airflow DAG run: a resumed step re-attaches to it.
 */
export async function stoppedForGood(pool: pg.Pool, ctx: Key, child: string, graceMs: number): Promise<boolean> {
  const steps = Object.entries(STEP_CHILDREN).flatMap(([step, c]) => (c === child ? [step] : []));
  const until = Date.now() + graceMs;
  for (;;) {
    const { rows } = await pool.query<{ status: string; running: boolean }>({
      name: 'l2flow_airflow_stop_verdict',
      text: `select r.status, exists (select 1 from l2flow.step s where s.run_id = r.run_id and s.attempt = $2
                                        and s.status = 'running' and s.step = any($3)) as running
               from l2flow.run r where r.run_id = $1`,
      values: [ctx.runId, ctx.attempt, steps],
    });
    const row = rows[0];
    if (!row || row.status !== 'running' || !row.running) return true;
    if (Date.now() >= until) return false;
    await abortableSleep(VERDICT_POLL_MS);
  }
}
