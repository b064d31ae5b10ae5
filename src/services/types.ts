import type { Logger } from 'pino';

/** What every step service receives about the run it works for. Plain JSON: it is part of the persisted snapshot. */
export interface StepContext {
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
}

/** Input of a sensor: the run plus its absolute deadline (epoch ms), kept in context so it survives restarts. */
export interface SensorInput extends StepContext {
  deadline: number;
  /** When the step started (epoch ms); a step resumed after a restart keeps its original start. */
  startedAt?: number;
}

/** A step implementation: plain async function, idempotent, honours the signal. */
export type StepFn<I, O> = (input: I, signal: AbortSignal) => Promise<O>;

/** The failure that sends the run to email_on_failure. */
export interface RunFailure {
  step: string;
  code: string;
  message: string;
}

export type { Logger };
