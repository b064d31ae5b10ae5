import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, waitFor, type AnyActorLogic } from 'xstate';
import {
  activeSteps,
  runOutcome,
  STEP_IDS,
  workflowMachine,
  type StepId,
  type WorkflowInput,
  type WorkflowSnapshot,
} from '../../src/machines/workflow.js';
import { RUN_INPUT } from '../helpers/machine-input.js';

// Fakes are for the machine's unit tests only: each actor is a promise the test resolves or rejects at will.

const ACTOR_OF: Record<StepId, string> = {
  wait_for_l2_full_load: 'waitForL2FullLoad',
  get_load_id: 'getLoadId',
  workflow_registration: 'workflowRegistration',
  wait_for_success_end: 'waitForSuccessEnd',
  run_sys_kill_all_session_pg: 'runSysKillAllSessionPg',
  run_wf_data_preparation_for_reports: 'runWfDataPreparationForReports',
  load_ds_client_segmentation: 'loadDsClientSegmentation',
  send_flg_to_sap: 'sendFlgToSap',
  end: 'end',
  email_on_failure: 'emailOnFailure',
};

type Behaviour = 'ok' | 'fail' | 'hang';

interface Call {
  step: StepId;
  input: Record<string, unknown>;
  signal: AbortSignal;
}

function fakes(behaviour: Partial<Record<StepId, Behaviour>> = {}) {
  const calls: Call[] = [];
  const actors: Record<string, AnyActorLogic> = {};
  for (const step of STEP_IDS) {
    actors[ACTOR_OF[step]] = fromPromise(async ({ input, signal }: { input: Record<string, unknown>; signal: AbortSignal }) => {
      calls.push({ step, input, signal });
      const b = behaviour[step] ?? 'ok';
      if (b === 'fail') throw Object.assign(new Error(`${step} broke`), { code: 'BOOM' });
      if (b === 'hang') await new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted'))));
      return step === 'get_load_id' ? { loadId: 4242 } : {};
    });
  }
  return { calls, machine: workflowMachine.provide({ actors: actors as never }), invoked: () => calls.map((c) => c.step) };
}

const input: WorkflowInput = RUN_INPUT;

async function runToEnd(behaviour: Partial<Record<StepId, Behaviour>>) {
  const f = fakes(behaviour);
  const actor = createActor(f.machine, { input }).start();
  const snap = await waitFor(actor, (s) => s.status === 'done', { timeout: 2000 });
  return { ...f, snap, actor };
}

describe('workflow machine', () => {
  it('runs every step in SPEC order and ends in success with the load id in context', async () => {
    const { snap, invoked, calls } = await runToEnd({});
    expect(runOutcome(snap)).toBe('success');
    const order = invoked();
    expect(order.slice(0, 5)).toEqual([
      'wait_for_l2_full_load',
      'get_load_id',
      'workflow_registration',
      'wait_for_success_end',
      'run_sys_kill_all_session_pg',
    ]);
    expect(order.indexOf('send_flg_to_sap')).toBeGreaterThan(order.indexOf('load_ds_client_segmentation'));
    expect(order.at(-1)).toBe('end');
    expect(order).not.toContain('email_on_failure');
    expect(snap.context.loadId).toBe(4242);
    expect(calls.find((c) => c.step === 'send_flg_to_sap')!.input).toMatchObject({ loadId: 4242, businessDate: '2024-03-14' });
    for (const step of STEP_IDS.filter((s) => s !== 'email_on_failure')) {
      const rec = snap.context.steps[step]!;
      expect(rec.status, step).toBe('success');
      expect(rec.endedAt! >= rec.startedAt).toBe(true);
    }
  });

  it('starts both branches together after run_sys_kill_all_session_pg', async () => {
    const f = fakes({ run_wf_data_preparation_for_reports: 'hang', load_ds_client_segmentation: 'hang' });
    const actor = createActor(f.machine, { input }).start();
    const snap = await waitFor(actor, (s) => activeSteps(s.value).length === 2, { timeout: 2000 });
    expect(activeSteps(snap.value)).toEqual(['run_wf_data_preparation_for_reports', 'load_ds_client_segmentation']);
    actor.stop();
  });

  const failing = STEP_IDS.filter((s) => s !== 'email_on_failure');
  it.each(failing)('a failure of %s goes to email_on_failure once and ends failed', async (step) => {
    const { snap, invoked, calls } = await runToEnd({ [step]: 'fail' });
    expect(runOutcome(snap)).toBe('failed');
    expect(snap.context.failure).toEqual({ step, code: 'BOOM', message: `${step} broke` });
    expect(invoked().filter((s) => s === 'email_on_failure')).toHaveLength(1);
    expect(calls.find((c) => c.step === 'email_on_failure')!.input).toMatchObject({ failure: { step, code: 'BOOM' } });
    expect(snap.context.steps[step]).toMatchObject({ status: 'failed', error: { code: 'BOOM' } });
    if (step !== 'end') expect(invoked()).not.toContain('end');
  });

  it('stops the reports branch when the segmentation branch fails while reports still runs', async () => {
    const f = fakes({ run_wf_data_preparation_for_reports: 'hang', send_flg_to_sap: 'fail' });
    const actor = createActor(f.machine, { input }).start();
    const snap = await waitFor(actor, (s) => s.status === 'done', { timeout: 2000 });
    expect(runOutcome(snap)).toBe('failed');
    expect(snap.context.failure?.step).toBe('send_flg_to_sap');
    const reports = f.calls.find((c) => c.step === 'run_wf_data_preparation_for_reports')!;
    expect(reports.signal.aborted).toBe(true);
    expect(snap.context.steps.run_wf_data_preparation_for_reports?.status).toBe('cancelled');
    expect(f.invoked().filter((s) => s === 'email_on_failure')).toHaveLength(1);
  });

  it('ends failed with the notify error kept when queueing the failure mail itself fails', async () => {
    const { snap } = await runToEnd({ get_load_id: 'fail', email_on_failure: 'fail' });
    expect(runOutcome(snap)).toBe('failed');
    expect(snap.context.failure?.step).toBe('get_load_id');
    expect(snap.context.notifyError).toBe('email_on_failure broke');
  });

  it('cancels: aborts the running step, sends no mail, ends cancelled', async () => {
    const f = fakes({ wait_for_success_end: 'hang' });
    const actor = createActor(f.machine, { input }).start();
    await waitFor(actor, (s) => s.matches('wait_for_success_end'));
    actor.send({ type: 'CANCEL' });
    expect(runOutcome(actor.getSnapshot())).toBe('cancelled');
    expect(f.calls.find((c) => c.step === 'wait_for_success_end')!.signal.aborted).toBe(true);
    expect(f.invoked()).not.toContain('email_on_failure');
    expect(actor.getSnapshot().context.steps.wait_for_success_end?.status).toBe('cancelled');
  });

  it('gives each sensor an absolute deadline of its start plus its timeout', async () => {
    const before = Date.now();
    const f = fakes({ wait_for_l2_full_load: 'hang' });
    const actor = createActor(f.machine, { input }).start();
    const deadline = f.calls[0]!.input.deadline as number;
    expect(deadline).toBeGreaterThanOrEqual(before + 60_000);
    expect(deadline).toBeLessThanOrEqual(Date.now() + 60_000);
    expect(actor.getSnapshot().context.deadlines.wait_for_l2_full_load).toBe(deadline);
    actor.stop();
  });

  it('restores from a snapshot taken mid-run: re-invokes only the steps in flight, keeps load id and deadlines', async () => {
    const first = fakes({ run_wf_data_preparation_for_reports: 'hang', send_flg_to_sap: 'hang' });
    const a1 = createActor(first.machine, { input }).start();
    await waitFor(a1, (s) => s.matches({ branches: { segmentation_group: 'send_flg_to_sap' } }));
    const persisted = JSON.parse(JSON.stringify(a1.getPersistedSnapshot()));
    a1.stop();

    const second = fakes({});
    const a2 = createActor(second.machine, { snapshot: persisted, input }).start();
    const snap: WorkflowSnapshot = await waitFor(a2, (s) => s.status === 'done', { timeout: 2000 });
    expect(runOutcome(snap)).toBe('success');
    expect(second.invoked().sort()).toEqual(['end', 'run_wf_data_preparation_for_reports', 'send_flg_to_sap']);
    expect(second.calls.find((c) => c.step === 'send_flg_to_sap')!.input).toMatchObject({ loadId: 4242 });
    expect(snap.context.steps.get_load_id).toEqual(persisted.context.steps.get_load_id);
  });

  it('re-invokes a sensor after restore with the original deadline, not a fresh timeout', async () => {
    const first = fakes({ wait_for_l2_full_load: 'hang' });
    const a1 = createActor(first.machine, { input }).start();
    const deadline = first.calls[0]!.input.deadline;
    const persisted = JSON.parse(JSON.stringify(a1.getPersistedSnapshot()));
    a1.stop();
    await new Promise((r) => setTimeout(r, 20));
    const second = fakes({ wait_for_l2_full_load: 'hang' });
    const a2 = createActor(second.machine, { snapshot: persisted, input }).start();
    expect(second.calls[0]!.step).toBe('wait_for_l2_full_load');
    expect(second.calls[0]!.input.deadline).toBe(deadline);
    // The original start goes with it, so a timeout reports the whole wait.
    expect(first.calls[0]!.input.startedAt).toBe(persisted.context.steps.wait_for_l2_full_load.startedAt);
    expect(second.calls[0]!.input.startedAt).toBe(first.calls[0]!.input.startedAt);
    a2.stop();
  });

  it('RUN_TIMEOUT fails the run from whatever steps are running, with one mail, and fixes the deadline at creation', async () => {
    const before = Date.now();
    const f = fakes({ run_wf_data_preparation_for_reports: 'hang', load_ds_client_segmentation: 'hang' });
    const actor = createActor(f.machine, { input: { ...input, runTimeoutMs: 3_600_000 } }).start();
    const deadline = actor.getSnapshot().context.runDeadline!;
    expect(deadline).toBeGreaterThanOrEqual(before + 3_600_000);
    await waitFor(actor, (s) => activeSteps(s.value).length === 2);
    actor.send({ type: 'RUN_TIMEOUT' });
    const snap = await waitFor(actor, (s) => s.status === 'done', { timeout: 2000 });
    expect(runOutcome(snap)).toBe('failed');
    expect(snap.context.failure).toMatchObject({ step: 'run_wf_data_preparation_for_reports', code: 'RUN_TIMEOUT' });
    expect(snap.context.failure?.message).toMatch(/3600 s while in run_wf_data_preparation_for_reports, load_ds_client_segmentation/);
    expect(f.calls.find((c) => c.step === 'load_ds_client_segmentation')!.signal.aborted).toBe(true);
    expect(f.calls.find((c) => c.step === 'run_wf_data_preparation_for_reports')!.signal.aborted).toBe(true);
    expect(f.invoked().filter((s) => s === 'email_on_failure')).toHaveLength(1);
    expect(snap.context.runDeadline).toBe(deadline);
  });

  it('ignores RUN_TIMEOUT once the run is already failing', async () => {
    const f = fakes({ get_load_id: 'fail', email_on_failure: 'hang' });
    const actor = createActor(f.machine, { input: { ...input, runTimeoutMs: 1000 } }).start();
    await waitFor(actor, (s) => s.matches('email_on_failure'));
    actor.send({ type: 'RUN_TIMEOUT' });
    expect(actor.getSnapshot().context.failure?.code).toBe('BOOM');
    expect(f.invoked().filter((s) => s === 'email_on_failure')).toHaveLength(1);
    actor.stop();
  });
});
