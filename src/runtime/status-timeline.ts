import { formatDuration } from '../lib/time.js';
import type { RunDetails } from './api.js';
import { fmtTime } from './cli-io.js';
import type { StepRow } from './run-store.js';
import { stateOf, symbolOf } from './status-view.js';

/**
 * `l2flow status --date D`: one run's timeline — each step with start, end, duration, state and error; what a
 * waiting sensor waits on; the failure mail; and the audit trail once the audit table exists.
 */

/** A run as the timeline shows it: getRun()'s details, what its waiting sensor waits on included. */
export type TimelineRun = RunDetails;

/** How long a step took, or has been running so far. */
export function stepDurationMs(s: Pick<StepRow, 'started_at' | 'finished_at'>, now = Date.now()): number {
  return (s.finished_at ? s.finished_at.getTime() : now) - s.started_at.getTime();
}

/** The timeline's lines. */
export function timelineLines(run: TimelineRun, o: { color?: boolean; now?: number } = {}): string[] {
  const now = o.now ?? Date.now();
  const lines = [
    `${run.run_id}  ${run.status}  (attempt ${run.attempt}, load id ${run.load_id ?? '-'}, triggered by ${run.triggered_by})`,
    `logical date ${run.logical_date}, business date ${run.business_date}; current step: ${run.current_step ?? '-'}`,
  ];
  if (run.error) lines.push(`error: ${run.error.code}: ${run.error.message}`);
  if (run.steps.length === 0) lines.push('  no step has started yet');
  // Every try of every attempt: a heading per attempt once the run was cleared, "try n" once a step was retried.
  const attempts = new Set(run.steps.map((s) => s.attempt)).size > 1;
  const withTries = run.steps.some((s) => s.try_number > 1);
  let attempt = 0;
  for (const s of run.steps) {
    if (attempts && s.attempt !== attempt) lines.push(`  attempt ${s.attempt}:`);
    attempt = s.attempt;
    const state = stateOf(s);
    const took = formatDuration(stepDurationMs(s, now)) + (s.finished_at ? '' : ' so far');
    const tryCell = withTries ? `try ${s.try_number}`.padEnd(7) : '';
    const error = s.error ? `  ${s.error.code}: ${s.error.message}` : '';
    const retry = s.retry_at ? `  next try at ${fmtTime(s.retry_at)}` : '';
    lines.push(`${symbolOf(state, o.color)} ${s.step.padEnd(36)} ${tryCell}${state.padEnd(11)} ${fmtTime(s.started_at)} -> ${fmtTime(s.finished_at).padEnd(19)}  ${took}${error}${retry}`);
    if (state === 'waiting' && run.waitingOn?.step === s.step) lines.push(`      ${run.waitingOn.text}`);
  }
  if (run.failureEmail.length === 0 && run.status === 'failed') lines.push('failure mail: none queued');
  for (const m of run.failureEmail) {
    const when = m.status === 'sent' && m.sentAt ? ` at ${fmtTime(m.sentAt)}` : m.status === 'pending' ? `; next try at ${fmtTime(m.nextAttemptAt)}` : '';
    lines.push(`failure mail: ${m.status} after ${m.tries} tr${m.tries === 1 ? 'y' : 'ies'}${m.lastError ? `; last error: ${m.lastError}` : ''}${when}`);
  }
  // Who cleared, marked, cancelled or triggered this run, and why.
  for (const a of run.audit) {
    const what = a.action === 'clear' ? `clear (${a.run_ids.length} run${a.run_ids.length === 1 ? '' : 's'})` : a.action === 'mark' ? `mark ${String(a.details.status)}` : a.action;
    lines.push(`audit: ${fmtTime(a.at)} ${what} by ${a.actor}${a.reason ? `: ${a.reason}` : ''}`);
  }
  return lines;
}
