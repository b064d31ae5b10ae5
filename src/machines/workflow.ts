import { assign, fromPromise, setup, type SnapshotFrom, type StateValue } from 'xstate';
// Pure helpers only: lib/errors.ts and lib/time.ts do no I/O (a timer is not I/O).
import { toErrorInfo, type ErrorCode } from '../lib/errors.js';
import { abortableSleep, MAX_TIMER_MS } from '../lib/time.js';
import { startTargets } from './clear-plan.js';
import type { FailureStepInput, SensorStep, SensorStepInput, StepInput, WorkflowContext, WorkflowEvent, WorkflowInput } from './context.js';
import { nextTryAt } from './step-retry.js';
import { busySteps, closeRunning, errorOf, failTryForRetry, sensorInput, startTry, stepInput } from './step-records.js';
import { STEP_IDS, STEP_TABLE, type StepId } from './steps.js';

/**
 * The statechart of WF_MAIN_DATASETS_LOAD_L2_TO_L2. State keys are the original Airflow task ids, so operators
 * recognise them. The machine does no I/O: every step is an actor named in `setup({ actors })` and supplied by
 * the runtime with `machine.provide({ actors })`; named actors are what make snapshots persistable.
 * Each step state has two substates: `try` runs the step's actor, `retry_wait` waits for the next try.
 */

export const WORKFLOW_ID = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';

export { STEP_IDS, STEP_TABLE, type StepId } from './steps.js';
export type * from './context.js';

// Placeholders that say which actor was not provided; the runtime replaces every one of them.
function notProvided<O, I>(name: string) {
  return fromPromise<O, I>(async () => {
    throw new Error(`actor ${name} was not provided: build the machine with machine.provide({ actors })`);
  });
}

/** The one failure route: any step's error goes to email_on_failure, leaving (and stopping) the parallel regions. */
const onStepError = (step: StepId) =>
  ({ target: '#wf.email_on_failure', actions: { type: 'failStep', params: { step } } }) as const;
const start = (step: StepId) => ({ type: 'startStep', params: { step } }) as const;
const finish = (step: StepId) => ({ type: 'finishStep', params: { step } }) as const;
const arm = (step: SensorStep) => ({ type: 'armDeadline', params: { step } }) as const;

/**
 * A step as two substates: `try` invokes the step's actor; a failure that its retry policy allows waits in
 * `retry_wait` until an absolute wake-up time kept in the step's record, then tries again. Anything else takes the
 * one failure route.
 */
function stepState<S extends StepId, I extends StepInput>(
  step: S,
  next: string,
  input: (c: WorkflowContext, step: S) => I,
  o: { sensor?: SensorStep; takesLoadId?: boolean } = {},
) {
  return {
    initial: 'try',
    states: {
      try: {
        entry: o.sensor ? [start(step), arm(o.sensor)] : [start(step)],
        invoke: {
          src: STEP_TABLE[step].actor as (typeof STEP_TABLE)[S]['actor'],
          input: ({ context }: { context: WorkflowContext }) => input(context, step),
          onDone: { target: next, actions: o.takesLoadId ? [{ type: 'takeLoadId' } as const, finish(step)] : [finish(step)] },
          onError: [
            { guard: { type: 'mayRetry', params: { step } }, target: 'retry_wait', actions: { type: 'waitForRetry', params: { step } } },
            onStepError(step),
          ],
        },
      },
      retry_wait: {
        invoke: {
          src: 'retryTimer',
          input: ({ context }: { context: WorkflowContext }) => ({ at: context.steps[step]?.retryAt ?? 0 }),
          onDone: 'try',
        },
      },
    },
  } as const;
}

/** A cleared run starts where its plan says (see clear-plan.ts); a new run at the top. */
const sameSteps = (a: readonly string[] | null | undefined, b: readonly string[]) => !!a && a.length === b.length && a.every((s, i) => s === b[i]);

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
    // The machine's own timer, not a service: a restored snapshot re-invokes it with the same absolute time.
    retryTimer: fromPromise<void, { at: number }>(({ input, signal }) =>
      abortableSleep(Math.min(Math.max(0, input.at - Date.now()), MAX_TIMER_MS), signal),
    ),
  },
  guards: {
    mayRetry: ({ context, event }, { step }: { step: StepId }) =>
      nextTryAt(context.retry, step, context.steps[step]?.try ?? 1, toErrorInfo((event as { error?: unknown }).error), context.runDeadline, Date.now()) !== null,
    startsAt: ({ context }, { steps }: { steps: readonly StepId[] }) => sameSteps(context.startAt, steps),
  },
  actions: {
    startStep: assign(({ context }, { step }: { step: StepId }) => startTry(context, step)),
    finishStep: assign(({ context }, { step }: { step: StepId }) => ({
      steps: { ...context.steps, [step]: { ...context.steps[step]!, status: 'success', endedAt: Date.now() } },
    })),
    takeLoadId: assign({ loadId: ({ event }) => (event as unknown as { output: { loadId: number } }).output.loadId }),
    // A retried sensor keeps the deadline of its first try: retries never lengthen a sensor's timeout.
    armDeadline: assign(({ context }, { step }: { step: SensorStep }) => ({
      deadlines: { ...context.deadlines, [step]: context.deadlines[step] ?? Date.now() + context.sensorTimeoutMs[step] },
    })),
    waitForRetry: assign(({ context, event }, { step }: { step: StepId }) => {
      const error = (event as { error?: unknown }).error;
      const at = nextTryAt(context.retry, step, context.steps[step]?.try ?? 1, toErrorInfo(error), context.runDeadline, Date.now());
      return failTryForRetry(context, step, error, at ?? Date.now());
    }),
    timeOutRun: assign(({ context }) => {
      const busy = busySteps(context.steps);
      const step = busy[0] ?? 'run';
      const error = {
        code: 'RUN_TIMEOUT' satisfies ErrorCode,
        message: `the run exceeded its timeout of ${Math.round((context.runTimeoutMs ?? 0) / 1000)} s while in ${busy.join(', ') || 'no step'}`,
      };
      const running = busy.find((id) => context.steps[id]?.status === 'running');
      return { failure: { step, ...error }, steps: closeRunning(context.steps, 'cancelled', running ? { step: running, error } : undefined) };
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
    loadId: input.loadId ?? null,
    runDeadline: input.runTimeoutMs ? Date.now() + input.runTimeoutMs : null,
    deadlines: {},
    steps: {},
    tries: [],
    failure: null,
    notifyError: null,
  }),
  initial: 'start',
  on: {
    CANCEL: { target: '.cancelled', actions: assign({ steps: ({ context }) => closeRunning(context.steps, 'cancelled') }) },
    // A run already failing (in email_on_failure) keeps its first failure.
    RUN_TIMEOUT: { guard: ({ context }) => context.failure === null, target: '.email_on_failure', actions: 'timeOutRun' },
  },
  states: {
    // Transient: a new run goes to the first step, a cleared run to the steps its plan starts in.
    start: {
      always: [
        ...startTargets().map(({ startAt, target }) => ({ guard: { type: 'startsAt' as const, params: { steps: startAt } }, target })),
        { target: 'wait_for_l2_full_load' },
      ],
    },
    wait_for_l2_full_load: stepState('wait_for_l2_full_load', '#wf.get_load_id', sensorInput, { sensor: 'wait_for_l2_full_load' }),
    get_load_id: stepState('get_load_id', '#wf.workflow_registration', stepInput, { takesLoadId: true }),
    workflow_registration: stepState('workflow_registration', '#wf.wait_for_success_end', stepInput),
    wait_for_success_end: stepState('wait_for_success_end', '#wf.run_sys_kill_all_session_pg', sensorInput, { sensor: 'wait_for_success_end' }),
    run_sys_kill_all_session_pg: stepState('run_sys_kill_all_session_pg', '#wf.branches', stepInput),
    // Reports and segmentation run side by side; both regions must reach their final state before `end`.
    branches: {
      type: 'parallel',
      onDone: 'end',
      states: {
        reports: {
          initial: 'run_wf_data_preparation_for_reports',
          states: {
            run_wf_data_preparation_for_reports: stepState('run_wf_data_preparation_for_reports', '#wf.branches.reports.done', stepInput),
            done: { type: 'final' },
          },
        },
        segmentation_group: {
          initial: 'load_ds_client_segmentation',
          states: {
            load_ds_client_segmentation: stepState('load_ds_client_segmentation', '#wf.branches.segmentation_group.send_flg_to_sap', stepInput),
            send_flg_to_sap: stepState('send_flg_to_sap', '#wf.branches.segmentation_group.done', stepInput),
            done: { type: 'final' },
          },
        },
      },
    },
    end: stepState('end', '#wf.success', stepInput),
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
