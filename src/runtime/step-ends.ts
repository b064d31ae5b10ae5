import type { StepRecord, StepStatus, WorkflowContext } from '../machines/workflow.js';
import type { StepId } from '../machines/steps.js';

/** A try of a step that ended in this process: what the run's step record says about it. */
export interface StepEnd {
  step: StepId;
  status: Exclude<StepStatus, 'running'>;
  try: number;
  /** Epoch ms; a step resumed after a restart keeps its original start, so the duration is the whole try. */
  startedAt: number;
  endedAt: number;
}

/**
 * Follows a run's step records snapshot by snapshot and returns the tries that ended since the last one. The first
 * snapshot is the baseline (a restored run's earlier steps ended elsewhere, or before the restart: not reported
 * again). A try is known by its step and start, so a retried step reports each of its tries once.
 */
export function createStepEndTracker(): (steps: WorkflowContext['steps']) => StepEnd[] {
  let seen: Set<string> | null = null;
  return (steps) => {
    const first = seen === null;
    const known = (seen ??= new Set());
    const out: StepEnd[] = [];
    for (const [step, rec] of Object.entries(steps) as Array<[StepId, StepRecord | undefined]>) {
      if (!rec || rec.status === 'running' || rec.endedAt === undefined) continue;
      const key = `${step}@${rec.startedAt}`;
      if (known.has(key)) continue;
      known.add(key);
      if (!first) out.push({ step, status: rec.status, try: rec.try ?? 1, startedAt: rec.startedAt, endedAt: rec.endedAt });
    }
    return out;
  };
}
