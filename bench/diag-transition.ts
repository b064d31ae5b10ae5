/**
 * Diagnostic (not part of the suite): how long XState takes the sensor's transition (the flag sensor's promise
 * resolves → the actor's observers are told, get_load_id invoked), the real machine with promise actors that do no
 * I/O, taken back to back and after an idle pause. Prints the p50 and p90 of each.
 * `node dist/bench/diag-transition.js [N]` (default 700 per mode, the first 100 not counted).
 */
import { performance } from 'node:perf_hooks';
import { createActor, fromPromise } from 'xstate';
import { workflowMachine, type FailureStepInput, type SensorStepInput, type StepInput, type WorkflowInput } from '../src/machines/workflow.js';
import { percentiles, sleep } from './harness.js';

const N = Number(process.argv[2] ?? 700);
let release: (v: unknown) => void = () => undefined;
const never = <I>() => fromPromise<unknown, I>(() => new Promise(() => undefined));
// A step that never ends: only the sensor's transition is timed.
const machine = workflowMachine.provide({
  actors: {
    waitForL2FullLoad: fromPromise(() => new Promise((r) => (release = r))),
    getLoadId: fromPromise(async () => {
      await new Promise((r) => setImmediate(r));
      return { loadId: 1 };
    }),
    workflowRegistration: never<StepInput>(), waitForSuccessEnd: never<SensorStepInput>(), runSysKillAllSessionPg: never<StepInput>(),
    runWfDataPreparationForReports: never<StepInput>(), loadDsClientSegmentation: never<StepInput>(), sendFlgToSap: never<StepInput>(),
    end: never<StepInput>(), emailOnFailure: never<FailureStepInput>(),
  },
});
const input: WorkflowInput = {
  runId: 'r', workflowId: 'WF', logicalDate: '2020-01-02', businessDate: '2020-01-01', attempt: 1,
  sensorTimeoutMs: { wait_for_l2_full_load: 1e9, wait_for_success_end: 1e9 }, runTimeoutMs: null,
  retry: {},
  startAt: null, loadId: null,
};

async function sample(idleMs: number): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < N; i++) {
    const actor = createActor(machine, { input });
    let t0 = 0;
    let took = 0;
    actor.subscribe(() => {
      if (t0 && !took) took = performance.now() - t0;
    });
    actor.start();
    await new Promise((r) => setImmediate(r));
    if (idleMs > 0) await sleep(idleMs);
    t0 = performance.now();
    release({ satisfiedAt: new Date().toISOString(), checks: 1 });
    await new Promise((r) => setImmediate(r));
    if (i >= 100) times.push(took);
    actor.stop();
  }
  return times;
}

for (const [label, idle] of [['back to back', 0], ['after 10 ms idle', 10]] as const) {
  const p = percentiles(await sample(idle));
  console.log(`${label.padEnd(18)} sensor done → observers: p50 ${p.p50.toFixed(3)} ms, p90 ${p.p90.toFixed(3)} ms`);
}
