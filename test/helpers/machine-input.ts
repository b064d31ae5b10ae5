import type { WorkflowInput } from '../../src/machines/workflow.js';

/** The input of a run of 2024-03-15 for the machine's unit tests. */
export const RUN_INPUT: WorkflowInput = {
  runId: 'manual__2024-03-15',
  workflowId: 'WF_MAIN_DATASETS_LOAD_L2_TO_L2',
  logicalDate: '2024-03-15',
  businessDate: '2024-03-14',
  attempt: 1,
  sensorTimeoutMs: { wait_for_l2_full_load: 60_000, wait_for_success_end: 120_000 },
};
