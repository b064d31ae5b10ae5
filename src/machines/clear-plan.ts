import { STEP_IDS, type StepId } from './steps.js';

/**
 * Where a cleared run (a new attempt of the same run) starts, as Airflow's "clear task + downstream": the
 * from-step and every step after it run again; steps before it keep their earlier success. In the parallel part the
 * other branch is not downstream of the from-step: it runs again only from its first step that has not succeeded
 * (in this run's latest record of it), and is skipped when it has fully succeeded. `end` always runs again.
 */

const LINEAR: StepId[] = ['wait_for_l2_full_load', 'get_load_id', 'workflow_registration', 'wait_for_success_end', 'run_sys_kill_all_session_pg'];
/** The steps of each parallel branch, in order. */
export const BRANCHES = {
  reports: ['run_wf_data_preparation_for_reports'],
  segmentation_group: ['load_ds_client_segmentation', 'send_flg_to_sap'],
} as const satisfies Record<string, StepId[]>;

/** Steps a run can be cleared from: every step but the failure mail, which runs only when a step fails. */
export const CLEARABLE_STEPS: StepId[] = STEP_IDS.filter((s) => s !== 'email_on_failure');

export interface ClearPlan {
  fromStep: StepId;
  /** The steps the new attempt starts in: one, or one per branch that has work left. */
  startAt: StepId[];
  /** Every step the new attempt may run, in SPEC order (email_on_failure only if one fails). */
  rerun: StepId[];
}

/** Where to start a new attempt from `fromStep`, given the steps whose latest record is a success. */
export function planClear(fromStep: StepId, succeeded: ReadonlySet<string>): ClearPlan {
  if (!CLEARABLE_STEPS.includes(fromStep)) throw new Error(`${fromStep} cannot be cleared; clear one of ${CLEARABLE_STEPS.join(', ')}`);
  const inOrder = (steps: StepId[]) => STEP_IDS.filter((s) => steps.includes(s));
  if (LINEAR.includes(fromStep)) {
    return { fromStep, startAt: [fromStep], rerun: inOrder(STEP_IDS.filter((s) => s !== 'email_on_failure' && STEP_IDS.indexOf(s) >= STEP_IDS.indexOf(fromStep))) };
  }
  if (fromStep === 'end') return { fromStep, startAt: ['end'], rerun: ['end'] };
  const startAt: StepId[] = [];
  const rerun: StepId[] = ['end'];
  for (const steps of Object.values(BRANCHES) as StepId[][]) {
    const from = steps.includes(fromStep) ? steps.indexOf(fromStep) : steps.findIndex((s) => !succeeded.has(s));
    if (from < 0) continue;
    startAt.push(steps[from]!);
    rerun.push(...steps.slice(from));
  }
  return { fromStep, startAt: inOrder(startAt), rerun: inOrder(rerun) };
}

/** The state a new attempt enters for `startAt`: a step id, or the parallel state with each branch's start. */
export function startTargets(): { startAt: StepId[]; target: string | string[] }[] {
  const targets: { startAt: StepId[]; target: string | string[] }[] = [...LINEAR, 'end' as StepId].map((s) => ({ startAt: [s], target: `#wf.${s}` }));
  for (const r of [...BRANCHES.reports, 'done']) {
    for (const g of [...BRANCHES.segmentation_group, 'done']) {
      if (r === 'done' && g === 'done') continue;
      targets.push({
        startAt: [r, g].filter((s) => s !== 'done') as StepId[],
        target: [`#wf.branches.reports.${r}`, `#wf.branches.segmentation_group.${g}`],
      });
    }
  }
  return targets;
}
