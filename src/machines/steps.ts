/**
 * The step table: every step of WF_MAIN_DATASETS_LOAD_L2_TO_L2 (the original Airflow task ids, in the SPEC's
 * order), the actor the statechart invokes for it, and, for steps that run a child workflow, which child and which
 * Airflow-style pool. The machine takes its actor names from here and the runtime wires steps from it: one place
 * says which step uses which child, pool or actor.
 */
export const STEP_TABLE = {
  wait_for_l2_full_load: { actor: 'waitForL2FullLoad' },
  get_load_id: { actor: 'getLoadId' },
  workflow_registration: { actor: 'workflowRegistration' },
  wait_for_success_end: { actor: 'waitForSuccessEnd' },
  run_sys_kill_all_session_pg: { actor: 'runSysKillAllSessionPg', child: 'sys_kill_all_session_pg' },
  run_wf_data_preparation_for_reports: { actor: 'runWfDataPreparationForReports', child: 'wf_data_preparation_for_reports', pool: 'dwh_l2' },
  load_ds_client_segmentation: { actor: 'loadDsClientSegmentation', child: 'l1_to_l2_p_load_data_ds_client_segmentation_full' },
  send_flg_to_sap: { actor: 'sendFlgToSap' },
  end: { actor: 'end' },
  email_on_failure: { actor: 'emailOnFailure' },
} as const satisfies Record<string, { actor: string; child?: string; pool?: string }>;

export type StepId = keyof typeof STEP_TABLE;

/** Every step id, in the order of the SPEC. */
export const STEP_IDS = Object.keys(STEP_TABLE) as StepId[];

/** The steps that run a child workflow. */
export type ChildStep = { [S in StepId]: (typeof STEP_TABLE)[S] extends { child: string } ? S : never }[StepId];

/** The child workflow of each step that runs one. */
export const STEP_CHILDREN = Object.fromEntries(
  Object.entries(STEP_TABLE).flatMap(([step, spec]) => ('child' in spec ? [[step, spec.child]] : [])),
) as { [S in ChildStep]: (typeof STEP_TABLE)[S] extends { child: infer C } ? C : never };

/** The pool a step holds a slot of while it runs, if any. */
export function poolOf(step: StepId): string | undefined {
  const spec = STEP_TABLE[step];
  return 'pool' in spec ? spec.pool : undefined;
}
