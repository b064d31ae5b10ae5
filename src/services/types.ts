import type { Logger } from 'pino';
import type { RunFailure, SensorStepInput, StepInput } from '../machines/workflow.js';

/**
 * What the machine hands every step (the run's identity, plain JSON persisted with the snapshot) is the contract
 * services implement: its types are defined once, by the machine, and only named here in the services' words.
 */
export type StepContext = StepInput & {
  /**
   * The process executing the run, set by the runtime (never persisted): every write that records a step asks
   * l2flow.assert_owner with it, so a process whose run was taken over is refused. Absent: nothing is asserted.
   */
  owner?: string | undefined;
};
/** A sensor's input: the run plus its absolute deadline (epoch ms) and original start, both kept across restores. */
export type SensorInput = SensorStepInput;
export type { RunFailure };

/** A step implementation: plain async function, idempotent, honours the signal. */
export type StepFn<I, O> = (input: I, signal: AbortSignal) => Promise<O>;

export type { Logger };
