import { toErrorInfo } from '../lib/errors.js';
import type { SensorStep, SensorStepInput, StepInput, StepRecord, StepStatus, StepTryRecord, WorkflowContext } from './context.js';
import { STEP_IDS, type StepId } from './steps.js';

/** Pure helpers of the statechart's actions: what a step receives and how its records change. */

/** The input of a step actor. */
export function stepInput(c: WorkflowContext, step?: StepId): StepInput {
  return {
    runId: c.runId,
    workflowId: c.workflowId,
    logicalDate: c.logicalDate,
    businessDate: c.businessDate,
    attempt: c.attempt,
    loadId: c.loadId,
    ...(step ? { tryNumber: c.steps[step]?.try ?? 1 } : {}),
  };
}

/** The input of a sensor: the step input with its absolute deadline and first start. */
export function sensorInput(c: WorkflowContext, step: SensorStep): SensorStepInput {
  return { ...stepInput(c, step), deadline: c.deadlines[step]!, startedAt: c.steps[step]?.startedAt };
}

/** A step's error as the run records it: the error model's code and message, no details (the snapshot stays small). */
export function errorOf(error: unknown): { code: string; message: string } {
  const { code, message } = toErrorInfo(error);
  return { code, message };
}

/** Close every running step with `status`; the failed step itself gets the error. A pending retry is called off. */
export function closeRunning(steps: WorkflowContext['steps'], status: StepStatus, failed?: { step: StepId; error: { code: string; message: string } }) {
  const now = Date.now();
  const out: WorkflowContext['steps'] = { ...steps };
  for (const id of STEP_IDS) {
    const rec = out[id];
    if (rec?.retryAt !== undefined) {
      const { retryAt: _calledOff, ...rest } = rec;
      out[id] = rest;
      continue;
    }
    if (!rec || rec.status !== 'running') continue;
    out[id] = failed?.step === id ? { ...rec, status: 'failed', endedAt: now, error: failed.error } : { ...rec, status, endedAt: now };
  }
  return out;
}

/** Steps running or waiting for a retry, in SPEC order: what a run timeout interrupts. */
export function busySteps(steps: WorkflowContext['steps']): StepId[] {
  return STEP_IDS.filter((id) => steps[id]?.status === 'running' || steps[id]?.retryAt !== undefined);
}

/** The context change when `step` starts a try: a failed try before it moves to the history of tries. */
export function startTry(c: WorkflowContext, step: StepId): Pick<WorkflowContext, 'steps' | 'tries'> {
  const prev = c.steps[step];
  const tries = c.tries ?? [];
  const earlier: StepTryRecord[] = prev && prev.status === 'failed' ? [{ ...prev, step, try: prev.try ?? 1, retryAt: undefined }] : [];
  const rec: StepRecord = { status: 'running', startedAt: Date.now(), try: prev && earlier.length > 0 ? (prev.try ?? 1) + 1 : 1 };
  return { steps: { ...c.steps, [step]: rec }, tries: earlier.length > 0 ? [...tries, ...earlier] : tries };
}

/** The context change when failed try n of `step` waits for try n + 1 at `retryAt`. */
export function failTryForRetry(c: WorkflowContext, step: StepId, error: unknown, retryAt: number): Pick<WorkflowContext, 'steps'> {
  const rec = c.steps[step]!;
  return { steps: { ...c.steps, [step]: { ...rec, status: 'failed', endedAt: Date.now(), error: errorOf(error), retryAt } } };
}
