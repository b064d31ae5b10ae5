import type pg from 'pg';
import { formatInZone } from '../../lib/dates.js';

/** The run a `wait_for_success_end` waits on, as the database has it now; `status` null: there is no such run. */
export interface PreviousRunState {
  workflowId: string;
  logicalDate: string;
  status: 'queued' | 'running' | 'success' | 'failed' | 'cancelled' | null;
  currentStep: string | null;
  /** The step that failed and the error, for a failed (or cancelled) run. */
  failedStep: string | null;
  error: { code: string; message: string } | null;
  finishedAt: Date | null;
}

/** What a waiting run does about its predecessor's state, by the `wait_for_success_end` policy. */
export type PreviousRunVerdict = 'done' | 'pass' | 'fail' | 'wait';

/** One query: the state of the runs of `workflowId` for each of `logicalDates` (missing ones with status null). */
export async function previousRunStates(db: pg.Pool | pg.ClientBase, workflowId: string, logicalDates: string[]): Promise<PreviousRunState[]> {
  const { rows } = await db.query<StateRow>(
    `select to_char(k.d, 'YYYY-MM-DD') as d, ${STATE_COLUMNS}
       from unnest($2::date[]) as k(d) left join l2flow.run r on r.workflow_id = $1 and r.logical_date = k.d`,
    [workflowId, logicalDates],
  );
  return rows.map((r) => stateOfRow(workflowId, r));
}

/** The columns a run's state is read from (previousRunStates, and the sensor's check that releases a wait). */
export const STATE_COLUMNS = 'r.status, r.current_step, r.error, r.finished_at';

export interface StateRow {
  d: string;
  status: PreviousRunState['status'];
  current_step: string | null;
  error: (PreviousRunState['error'] & { details?: { step?: unknown } }) | null;
  finished_at: Date | null;
}

/** A row of STATE_COLUMNS (and the date `d`) as the state of the run of `workflowId` on that date. */
export function stateOfRow(workflowId: string, r: StateRow): PreviousRunState {
  const step = r.error?.details?.step;
  const failedStep = typeof step === 'string' ? step : null;
  // The run's error reads "<step>: <message>"; the step is shown apart, so it is not repeated.
  const message = r.error && failedStep && r.error.message.startsWith(`${failedStep}: `) ? r.error.message.slice(failedStep.length + 2) : r.error?.message;
  return {
    workflowId, logicalDate: r.d, status: r.status, currentStep: r.current_step, finishedAt: r.finished_at,
    failedStep: r.status === 'failed' || r.status === 'cancelled' ? failedStep : null,
    error: r.error && (r.status === 'failed' || r.status === 'cancelled') ? { code: r.error.code, message: message ?? '' } : null,
  };
}

/** The policy's verdict on a predecessor's state. */
export function verdictOn(state: PreviousRunState, policy: { whenMissing: 'wait' | 'pass'; whenFailed: 'wait' | 'fail' }): PreviousRunVerdict {
  if (state.status === 'success') return 'done';
  if (state.status === null) return policy.whenMissing === 'pass' ? 'pass' : 'wait';
  if (state.status === 'failed' || state.status === 'cancelled') return policy.whenFailed === 'fail' ? 'fail' : 'wait';
  return 'wait';
}

/** "2024-03-14, failed at send_flg_to_sap 2024-03-15 02:14:07 (SAP_HTTP_ERROR: …)": the predecessor as operators read it. */
export function describePreviousRun(s: PreviousRunState, timeZone: string): string {
  if (s.status === null) return `${s.logicalDate}, which has no run yet`;
  if (s.status === 'failed' || s.status === 'cancelled') {
    const at = s.finishedAt ? ` ${formatInZone(s.finishedAt, timeZone)}` : '';
    const where = s.failedStep ? ` at ${s.failedStep}` : '';
    const why = s.error ? ` (${s.error.code}: ${s.error.message.replace(/\s+/g, ' ').slice(0, 300)})` : '';
    return `${s.logicalDate}, ${s.status}${where}${at}${why}`;
  }
  return `${s.logicalDate}, ${s.status}${s.currentStep && s.status === 'running' ? ` in ${s.currentStep}` : ''}`;
}
