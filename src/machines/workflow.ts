import { assign, fromPromise, setup, type SnapshotFrom, type StateValue } from 'xstate';
// Pure helpers only: lib/errors.ts does no I/O.
import { toErrorInfo, type ErrorCode } from '../lib/errors.js';
import { STEP_IDS, STEP_TABLE, type StepId } from './steps.js';

/**
 * The statechart of WF_MAIN_DATASETS_LOAD_L2_TO_L2. State keys are the original Airflow task ids, so operators
 * recognise them. The machine does no I/O: every step is an actor named in `setup({ actors })` and supplied by
 * the runtime with `machine.provide({ actors })`; named actors are what make snapshots persistable.
 */

export const WORKFLOW_ID = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';

export { STEP_IDS, STEP_TABLE, type StepId } from './steps.js';

export type SensorStep = 'wait_for_l2_full_load' | 'wait_for_success_end';

export type StepStatus = 'running' | 'success' | 'failed' | 'cancelled';

/** One step's record in the run: epoch-ms timestamps, so the history survives in the persisted snapshot. */
export interface StepRecord {
  status: StepStatus;
  startedAt: number;
  endedAt?: number;
  error?: { code: string; message: string };
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
}

export interface WorkflowContext extends WorkflowInput {
  loadId: number | null;
  /** Absolute run deadline (epoch ms) fixed when the run starts; the host sends RUN_TIMEOUT when it passes. */
  runDeadline: number | null;
  /** Absolute sensor deadlines (epoch ms): XState does not persist `after` timers, a timestamp survives restore. */
  deadlines: Partial<Record<SensorStep, number>>;
  steps: Partial<Record<StepId, StepRecord>>;
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

// Placeholders that say which actor was not provided; the runtime replaces every one of them.
function notProvided<O, I>(name: string) {
  return fromPromise<O, I>(async () => {
    throw new Error(`actor ${name} was not provided: build the machine with machine.provide({ actors })`);
  });
}

function stepInput(c: WorkflowContext): StepInput {
  return {
    runId: c.runId,
    workflowId: c.workflowId,
    logicalDate: c.logicalDate,
    businessDate: c.businessDate,
    attempt: c.attempt,
    loadId: c.loadId,
  };
}

function sensorInput(c: WorkflowContext, step: SensorStep): SensorStepInput {
  return { ...stepInput(c), deadline: c.deadlines[step]!, startedAt: c.steps[step]?.startedAt };
}

/** A step's error as the run records it: the error model's code and message, no details (the snapshot stays small). */
function errorOf(error: unknown): { code: string; message: string } {
  const { code, message } = toErrorInfo(error);
  return { code, message };
}

/** Close every running step with `status`; the failed step itself gets the error. */
function closeRunning(steps: WorkflowContext['steps'], status: StepStatus, failed?: { step: StepId; error: { code: string; message: string } }) {
  const now = Date.now();
  const out: WorkflowContext['steps'] = { ...steps };
  for (const id of STEP_IDS) {
    const rec = out[id];
    if (!rec || rec.status !== 'running') continue;
    out[id] = failed?.step === id ? { ...rec, status: 'failed', endedAt: now, error: failed.error } : { ...rec, status, endedAt: now };
  }
  return out;
}

/** The one failure route: any step's error goes to email_on_failure, leaving (and stopping) the parallel regions. */
const onStepError = (step: StepId) =>
  ({ target: '#wf.email_on_failure', actions: { type: 'failStep', params: { step } } }) as const;
const start = (step: StepId) => ({ type: 'startStep', params: { step } }) as const;
const finish = (step: StepId) => ({ type: 'finishStep', params: { step } }) as const;
const arm = (step: SensorStep) => ({ type: 'armDeadline', params: { step } }) as const;

export const workflowMachine = setup({
  types: {
    context: {} as WorkflowContext,
    input: {} as WorkflowInput,
    events: {} as WorkflowEvent,
  },
  actors: {
    waitForL2FullLoad: notProvided<unknown, SensorStepInput>('waitForL2FullLoad'),
    getLoadId: notProvided<{ loadId: number }, StepInput>('getLoadId'),
    workflowRegistration: notProvided<unknown, StepInput>('workflowRegistration'),
    waitForSuccessEnd: notProvided<unknown, SensorStepInput>('waitForSuccessEnd'),
    runSysKillAllSessionPg: notProvided<unknown, StepInput>('runSysKillAllSessionPg'),
    runWfDataPreparationForReports: notProvided<unknown, StepInput>('runWfDataPreparationForReports'),
    loadDsClientSegmentation: notProvided<unknown, StepInput>('loadDsClientSegmentation'),
    sendFlgToSap: notProvided<unknown, StepInput>('sendFlgToSap'),
    end: notProvided<unknown, StepInput>('end'),
    emailOnFailure: notProvided<unknown, FailureStepInput>('emailOnFailure'),
  },
  actions: {
    startStep: assign(({ context }, { step }: { step: StepId }) => ({
      steps: { ...context.steps, [step]: { status: 'running', startedAt: Date.now() } satisfies StepRecord },
    })),
    finishStep: assign(({ context }, { step }: { step: StepId }) => ({
      steps: { ...context.steps, [step]: { ...context.steps[step]!, status: 'success', endedAt: Date.now() } satisfies StepRecord },
    })),
    armDeadline: assign(({ context }, { step }: { step: SensorStep }) => ({
      deadlines: { ...context.deadlines, [step]: Date.now() + context.sensorTimeoutMs[step] },
    })),
    timeOutRun: assign(({ context }) => {
      const running = STEP_IDS.filter((id) => context.steps[id]?.status === 'running');
      const step = running[0] ?? 'run';
      const error = {
        code: 'RUN_TIMEOUT' satisfies ErrorCode,
        message: `the run exceeded its timeout of ${Math.round((context.runTimeoutMs ?? 0) / 1000)} s while in ${running.join(', ') || 'no step'}`,
      };
      return { failure: { step, ...error }, steps: closeRunning(context.steps, 'cancelled', running[0] ? { step: running[0], error } : undefined) };
    }),
    failStep: assign(({ context, event }, { step }: { step: StepId }) => {
      const error = errorOf((event as { error?: unknown }).error);
      return { failure: { step, ...error }, steps: closeRunning(context.steps, 'cancelled', { step, error }) };
    }),
  },
}).createMachine({
  id: 'wf',
  context: ({ input }) => ({
    ...input,
    loadId: null,
    runDeadline: input.runTimeoutMs ? Date.now() + input.runTimeoutMs : null,
    deadlines: {},
    steps: {},
    failure: null,
    notifyError: null,
  }),
  initial: 'wait_for_l2_full_load',
  on: {
    CANCEL: { target: '.cancelled', actions: assign({ steps: ({ context }) => closeRunning(context.steps, 'cancelled') }) },
    // A run already failing (in email_on_failure) keeps its first failure.
    RUN_TIMEOUT: { guard: ({ context }) => context.failure === null, target: '.email_on_failure', actions: 'timeOutRun' },
  },
  states: {
    wait_for_l2_full_load: {
      entry: [start('wait_for_l2_full_load'), arm('wait_for_l2_full_load')],
      invoke: {
        src: STEP_TABLE.wait_for_l2_full_load.actor,
        input: ({ context }) => sensorInput(context, 'wait_for_l2_full_load'),
        onDone: { target: 'get_load_id', actions: finish('wait_for_l2_full_load') },
        onError: onStepError('wait_for_l2_full_load'),
      },
    },
    get_load_id: {
      entry: start('get_load_id'),
      invoke: {
        src: STEP_TABLE.get_load_id.actor,
        input: ({ context }) => stepInput(context),
        onDone: {
          target: 'workflow_registration',
          actions: [assign({ loadId: ({ event }) => event.output.loadId }), finish('get_load_id')],
        },
        onError: onStepError('get_load_id'),
      },
    },
    workflow_registration: {
      entry: start('workflow_registration'),
      invoke: {
        src: STEP_TABLE.workflow_registration.actor,
        input: ({ context }) => stepInput(context),
        onDone: { target: 'wait_for_success_end', actions: finish('workflow_registration') },
        onError: onStepError('workflow_registration'),
      },
    },
    wait_for_success_end: {
      entry: [start('wait_for_success_end'), arm('wait_for_success_end')],
      invoke: {
        src: STEP_TABLE.wait_for_success_end.actor,
        input: ({ context }) => sensorInput(context, 'wait_for_success_end'),
        onDone: { target: 'run_sys_kill_all_session_pg', actions: finish('wait_for_success_end') },
        onError: onStepError('wait_for_success_end'),
      },
    },
    run_sys_kill_all_session_pg: {
      entry: start('run_sys_kill_all_session_pg'),
      invoke: {
        src: STEP_TABLE.run_sys_kill_all_session_pg.actor,
        input: ({ context }) => stepInput(context),
        onDone: { target: 'branches', actions: finish('run_sys_kill_all_session_pg') },
        onError: onStepError('run_sys_kill_all_session_pg'),
      },
    },
    // Reports and segmentation run side by side; both regions must reach their final state before `end`.
    branches: {
      type: 'parallel',
      onDone: 'end',
      states: {
        reports: {
          initial: 'run_wf_data_preparation_for_reports',
          states: {
            run_wf_data_preparation_for_reports: {
              entry: start('run_wf_data_preparation_for_reports'),
              invoke: {
                src: STEP_TABLE.run_wf_data_preparation_for_reports.actor,
                input: ({ context }) => stepInput(context),
                onDone: { target: 'done', actions: finish('run_wf_data_preparation_for_reports') },
                onError: onStepError('run_wf_data_preparation_for_reports'),
              },
            },
            done: { type: 'final' },
          },
        },
        segmentation_group: {
          initial: 'load_ds_client_segmentation',
          states: {
            load_ds_client_segmentation: {
              entry: start('load_ds_client_segmentation'),
              invoke: {
                src: STEP_TABLE.load_ds_client_segmentation.actor,
                input: ({ context }) => stepInput(context),
                onDone: { target: 'send_flg_to_sap', actions: finish('load_ds_client_segmentation') },
                onError: onStepError('load_ds_client_segmentation'),
              },
            },
            send_flg_to_sap: {
              entry: start('send_flg_to_sap'),
              invoke: {
                src: STEP_TABLE.send_flg_to_sap.actor,
                input: ({ context }) => stepInput(context),
                onDone: { target: 'done', actions: finish('send_flg_to_sap') },
                onError: onStepError('send_flg_to_sap'),
              },
            },
            done: { type: 'final' },
          },
        },
      },
    },
    end: {
      entry: start('end'),
      invoke: {
        src: STEP_TABLE.end.actor,
        input: ({ context }) => stepInput(context),
        onDone: { target: 'success', actions: finish('end') },
        onError: onStepError('end'),
      },
    },
    email_on_failure: {
      entry: start('email_on_failure'),
      invoke: {
        src: STEP_TABLE.email_on_failure.actor,
        input: ({ context }) => ({ ...stepInput(context), failure: context.failure! }),
        onDone: { target: 'failed', actions: finish('email_on_failure') },
        // A notification that cannot even be queued must not hide the run's own failure.
        onError: {
          target: 'failed',
          actions: assign(({ context, event }) => ({
            notifyError: errorOf(event.error).message,
            steps: closeRunning(context.steps, 'failed', { step: 'email_on_failure', error: errorOf(event.error) }),
          })),
        },
      },
    },
    success: { type: 'final' },
    failed: { type: 'final' },
    cancelled: { type: 'final' },
  },
});

export type WorkflowMachine = typeof workflowMachine;
export type WorkflowSnapshot = SnapshotFrom<WorkflowMachine>;

/** Final outcome of a run, or null while it runs. */
export function runOutcome(snapshot: WorkflowSnapshot): 'success' | 'failed' | 'cancelled' | null {
  if (snapshot.status !== 'done') return null;
  if (snapshot.matches('success')) return 'success';
  if (snapshot.matches('cancelled')) return 'cancelled';
  return 'failed';
}

/** The step ids active in a state value (two while the parallel regions both run), in SPEC order. */
export function activeSteps(value: StateValue): StepId[] {
  const found = new Set<string>();
  const walk = (v: StateValue): void => {
    if (typeof v === 'string') {
      found.add(v);
      return;
    }
    for (const [key, child] of Object.entries(v)) {
      found.add(key);
      if (child) walk(child as StateValue);
    }
  };
  walk(value);
  return STEP_IDS.filter((id) => found.has(id));
}
