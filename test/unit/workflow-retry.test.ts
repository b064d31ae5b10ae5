import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, waitFor, type AnyActorLogic } from 'xstate';
import { planClear } from '../../src/machines/clear-plan.js';
import { stepRetryDelayMs } from '../../src/machines/step-retry.js';
import { runOutcome, STEP_IDS, STEP_TABLE, workflowMachine, type StepId, type WorkflowInput } from '../../src/machines/workflow.js';
import { RUN_INPUT } from '../helpers/machine-input.js';

// Per-step retries and cleared runs, with fake actors: a step fails its first `fail` calls, then succeeds.

type Plan = Partial<Record<StepId, { fail?: number; code?: string; hang?: boolean }>>;

function fakes(plan: Plan = {}) {
  const calls: { step: StepId; at: number; input: Record<string, unknown> }[] = [];
  const actors: Record<string, AnyActorLogic> = {};
  for (const step of STEP_IDS) {
    actors[STEP_TABLE[step].actor] = fromPromise(async ({ input, signal }: { input: Record<string, unknown>; signal: AbortSignal }) => {
      calls.push({ step, at: Date.now(), input });
      const p = plan[step] ?? {};
      if (p.hang) await new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted'))));
      if (calls.filter((c) => c.step === step).length <= (p.fail ?? 0)) throw Object.assign(new Error(`${step} broke`), { code: p.code ?? 'BOOM' });
      return step === 'get_load_id' ? { loadId: 4242 } : {};
    });
  }
  const of = (step: StepId) => calls.filter((c) => c.step === step);
  return { calls, of, machine: workflowMachine.provide({ actors: actors as never }) };
}

const base: WorkflowInput = RUN_INPUT;
const SEG = 'load_ds_client_segmentation' as const;
const retry = (retries: number, delayMs: number, maxDelayMs = 60_000) => ({ [SEG]: { retries, delayMs, maxDelayMs } });

describe('per-step retries', () => {
  it('backs off exponentially up to the cap, without jitter', () => {
    const p = { retries: 9, delayMs: 1000, maxDelayMs: 5000 };
    expect([1, 2, 3, 4, 5].map((n) => stepRetryDelayMs(p, n))).toEqual([1000, 2000, 4000, 5000, 5000]);
  });

  it('fails twice, retries twice with growing waits, then succeeds; every try is recorded with its error', async () => {
    const f = fakes({ [SEG]: { fail: 2 } });
    const actor = createActor(f.machine, { input: { ...base, retry: retry(2, 40) } }).start();
    const snap = await waitFor(actor, (s) => s.status === 'done', { timeout: 5000 });
    expect(runOutcome(snap)).toBe('success');
    const tries = f.of(SEG);
    expect(tries.map((c) => c.input.tryNumber)).toEqual([1, 2, 3]);
    // Not before the backoff: 40 ms after try 1, 80 ms after try 2.
    expect(tries[1]!.at - tries[0]!.at).toBeGreaterThanOrEqual(39);
    expect(tries[2]!.at - tries[1]!.at).toBeGreaterThanOrEqual(79);
    expect(snap.context.steps[SEG]).toMatchObject({ status: 'success', try: 3 });
    expect(snap.context.tries).toEqual([
      expect.objectContaining({ step: SEG, try: 1, status: 'failed', error: { code: 'BOOM', message: `${SEG} broke` } }),
      expect.objectContaining({ step: SEG, try: 2, status: 'failed', error: { code: 'BOOM', message: `${SEG} broke` } }),
    ]);
    expect(f.of('email_on_failure')).toHaveLength(0);
  });

  it('retries exhausted: takes the failure route once, with the last error', async () => {
    const f = fakes({ [SEG]: { fail: 99 } });
    const actor = createActor(f.machine, { input: { ...base, retry: retry(1, 10) } }).start();
    const snap = await waitFor(actor, (s) => s.status === 'done', { timeout: 5000 });
    expect(runOutcome(snap)).toBe('failed');
    expect(f.of(SEG)).toHaveLength(2);
    expect(f.of('email_on_failure')).toHaveLength(1);
    expect(snap.context.failure).toMatchObject({ step: SEG, code: 'BOOM' });
    expect(snap.context.steps[SEG]).toMatchObject({ status: 'failed', try: 2 });
    expect(snap.context.tries).toHaveLength(1);
  });

  it('never retries a failure no retry can fix (a sensor timeout)', async () => {
    const f = fakes({ wait_for_l2_full_load: { fail: 99, code: 'SENSOR_TIMEOUT' } });
    const input = { ...base, retry: { wait_for_l2_full_load: { retries: 3, delayMs: 10, maxDelayMs: 10 } } };
    const snap = await waitFor(createActor(f.machine, { input }).start(), (s) => s.status === 'done', { timeout: 5000 });
    expect(runOutcome(snap)).toBe('failed');
    expect(f.of('wait_for_l2_full_load')).toHaveLength(1);
  });

  it('a restore during the wait keeps the persisted wake-up time: no try before it, one try after it', async () => {
    const first = fakes({ [SEG]: { fail: 1 } });
    const a1 = createActor(first.machine, { input: { ...base, retry: retry(1, 3_600_000, 3_600_000) } }).start();
    const waiting = await waitFor(a1, (s) => s.matches({ branches: { segmentation_group: { [SEG]: 'retry_wait' } } }));
    const retryAt = waiting.context.steps[SEG]!.retryAt!;
    expect(retryAt).toBeGreaterThanOrEqual(first.of(SEG)[0]!.at + 3_600_000);
    const persisted = JSON.parse(JSON.stringify(a1.getPersistedSnapshot()));
    a1.stop();

    // Restored an hour early: still waiting, same wake-up time, nothing invoked.
    const second = fakes();
    const a2 = createActor(second.machine, { snapshot: persisted, input: base }).start();
    await new Promise((r) => setTimeout(r, 100));
    expect(second.of(SEG)).toHaveLength(0);
    expect(a2.getSnapshot().context.steps[SEG]!.retryAt).toBe(retryAt);
    a2.stop();

    // The same snapshot with the wake-up time 300 ms ahead: the try comes at that time, not sooner.
    const soon = Date.now() + 300;
    persisted.context.steps[SEG].retryAt = soon;
    // The restored timer runs with the input it was invoked with, persisted beside the context: move it as well.
    const timers = Object.values(persisted.children as Record<string, { snapshot: { input: { at?: number } } }>).filter((c) => c.snapshot.input.at === retryAt);
    expect(timers).toHaveLength(1);
    timers[0]!.snapshot.input.at = soon;
    const third = fakes();
    const a3 = createActor(third.machine, { snapshot: persisted, input: base }).start();
    const done = await waitFor(a3, (s) => s.status === 'done', { timeout: 5000 });
    expect(runOutcome(done)).toBe('success');
    expect(third.of(SEG)).toHaveLength(1);
    expect(third.of(SEG)[0]!.at).toBeGreaterThanOrEqual(soon);
    expect(third.of(SEG)[0]!.input.tryNumber).toBe(2);
  });

  it('the run timeout wins: a retry that would wake at or after the run deadline is not taken', async () => {
    const f = fakes({ [SEG]: { fail: 99 } });
    const actor = createActor(f.machine, { input: { ...base, runTimeoutMs: 60_000, retry: retry(5, 120_000, 120_000) } }).start();
    const snap = await waitFor(actor, (s) => s.status === 'done', { timeout: 5000 });
    expect(runOutcome(snap)).toBe('failed');
    expect(f.of(SEG)).toHaveLength(1);
    expect(snap.context.failure).toMatchObject({ step: SEG, code: 'BOOM' });
  });

  it('RUN_TIMEOUT during a retry wait fails the run from the waiting step, calling the retry off', async () => {
    const f = fakes({ [SEG]: { fail: 99 }, run_wf_data_preparation_for_reports: { hang: true } });
    const actor = createActor(f.machine, { input: { ...base, runTimeoutMs: 3_600_000, retry: retry(3, 60_000) } }).start();
    await waitFor(actor, (s) => s.matches({ branches: { segmentation_group: { [SEG]: 'retry_wait' } } }));
    actor.send({ type: 'RUN_TIMEOUT' });
    const snap = await waitFor(actor, (s) => s.status === 'done', { timeout: 2000 });
    expect(snap.context.failure).toMatchObject({ code: 'RUN_TIMEOUT' });
    expect(snap.context.steps[SEG]!.retryAt).toBeUndefined();
    expect(f.of(SEG)).toHaveLength(1);
    expect(f.of('email_on_failure')).toHaveLength(1);
  });
});

describe('cleared runs', () => {
  it('plans from a linear step: it and everything after it', () => {
    expect(planClear('wait_for_success_end', new Set()).rerun).toEqual([
      'wait_for_success_end', 'run_sys_kill_all_session_pg', 'run_wf_data_preparation_for_reports', 'load_ds_client_segmentation', 'send_flg_to_sap', 'end',
    ]);
  });

  it('plans from a branch step: the other branch only from its first step that did not succeed', () => {
    const reportsDone = new Set(['run_wf_data_preparation_for_reports', 'load_ds_client_segmentation']);
    expect(planClear('send_flg_to_sap', reportsDone)).toEqual({ fromStep: 'send_flg_to_sap', startAt: ['send_flg_to_sap'], rerun: ['send_flg_to_sap', 'end'] });
    expect(planClear('send_flg_to_sap', new Set(['load_ds_client_segmentation'])).startAt).toEqual(['run_wf_data_preparation_for_reports', 'send_flg_to_sap']);
    expect(() => planClear('email_on_failure', new Set())).toThrow(/cannot be cleared/);
  });

  it('starts a new attempt at send_flg_to_sap with the kept load id; nothing before it runs again', async () => {
    const f = fakes();
    const input = { ...base, attempt: 2, loadId: 77, startAt: ['send_flg_to_sap'] as StepId[] };
    const snap = await waitFor(createActor(f.machine, { input }).start(), (s) => s.status === 'done', { timeout: 2000 });
    expect(runOutcome(snap)).toBe('success');
    expect(f.calls.map((c) => c.step)).toEqual(['send_flg_to_sap', 'end']);
    expect(f.of('send_flg_to_sap')[0]!.input).toMatchObject({ attempt: 2, loadId: 77 });
    expect(snap.context.loadId).toBe(77);
  });

  it('starts both branches where the plan says, and a linear step with everything after it', async () => {
    const f = fakes();
    const input = { ...base, attempt: 2, loadId: 77, startAt: ['run_wf_data_preparation_for_reports', 'send_flg_to_sap'] as StepId[] };
    await waitFor(createActor(f.machine, { input }).start(), (s) => s.status === 'done', { timeout: 2000 });
    expect(f.calls.map((c) => c.step).sort()).toEqual(['end', 'run_wf_data_preparation_for_reports', 'send_flg_to_sap']);

    const g = fakes();
    const linear = { ...base, attempt: 3, loadId: 77, startAt: ['wait_for_success_end'] as StepId[] };
    await waitFor(createActor(g.machine, { input: linear }).start(), (s) => s.status === 'done', { timeout: 2000 });
    expect(g.calls.map((c) => c.step)).not.toContain('get_load_id');
    expect(g.calls[0]!.step).toBe('wait_for_success_end');
    expect(g.calls.at(-1)!.step).toBe('end');
  });
});
