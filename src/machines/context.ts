import type { StepRetryPolicy } from './step-retry.js';
import type { StepId } from './steps.js';

/** The statechart's data: its input, context, step records and events. Plain JSON: all of it is persisted. */

export type SensorStep = 'wait_for_l2_full_load' | 'wait_for_success_end';

export type StepStatus = 'running' | 'success' | 'failed' | 'cancelled';

/** One try of a step in the run: epoch-ms timestamps, so the history survives in the persisted snapshot. */
export interface StepRecord {
  status: StepStatus;
  startedAt: number;
  endedAt?: number;
  error?: { code: string; message: string };
  /** 1 for the first try of the step in this attempt, +1 per retry. */
  try?: number;
  /** When a failed try is tried again (epoch ms): set while the step waits for its retry. */
  retryAt?: number;
}

/** An earlier, failed try of a step that was retried. */
export interface StepTryRecord extends StepRecord {
  step: StepId;
  try: number;
}

export interface RunFailure {
  step: string;
  code: string;
  message: string;
}

export interface WorkflowInput {
  runId: string;
  workflowId: string;
  logicalDate: string;
  businessDate: string;
  attempt: number;
  /** Sensor timeouts in ms (Airflow's default is 7 days). */
  sensorTimeoutMs: Record<SensorStep, number>;
  /** Whole-run timeout in ms (Airflow's dagrun_timeout); null for none. */
  runTimeoutMs?: number | null;
  /** Retries per step; a step not named is never retried. */
  retry?: Partial<Record<StepId, StepRetryPolicy>>;
  /** A cleared run: the steps the new attempt starts in (see clear-plan.ts); absent, the run starts at the top. */
  startAt?: StepId[] | null;
  /** A cleared run keeps the load id its first attempt took. */
  loadId?: number | null;
}

export interface WorkflowContext extends WorkflowInput {
  loadId: number | null;
  /** Absolute run deadline (epoch ms) fixed when the run starts; the host sends RUN_TIMEOUT when it passes. */
  runDeadline: number | null;
  /** Absolute sensor deadlines (epoch ms): XState does not persist `after` timers, a timestamp survives restore. */
  deadlines: Partial<Record<SensorStep, number>>;
  /** The current (latest) try of each step. */
  steps: Partial<Record<StepId, StepRecord>>;
  /** Failed tries that were retried, oldest first: with `steps`, every try of this attempt. */
  tries: StepTryRecord[];
  failure: RunFailure | null;
  /** Set when queueing the failure mail itself failed; the run still ends `failed`. */
  notifyError: string | null;
}

/** What every step actor receives: the run's identity, never functions (it is persisted with the snapshot). */
export interface StepInput {
  runId: string;
  workflowId: string;
  /** The run's logical date, YYYY-MM-DD in the workflow timezone. */
  logicalDate: string;
  /** The date the run processes: logicalDate - 1, YYYY-MM-DD. */
  businessDate: string;
  /** Run attempt: 1 for the first run, +1 each time an operator clears and re-runs it. */
  attempt: number;
  /** Assigned by get_load_id; null before. */
  loadId: number | null;
  /** Try of the step within the attempt: 1, then +1 per retry. */
  tryNumber?: number;
}
export interface SensorStepInput extends StepInput {
  deadline: number;
  /** When the step started (epoch ms), kept across restores: errors report the whole wait. */
  startedAt?: number;
}
export interface FailureStepInput extends StepInput {
  failure: RunFailure;
}

export type WorkflowEvent = { type: 'CANCEL'; reason?: string } | { type: 'RUN_TIMEOUT' };
