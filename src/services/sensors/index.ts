/** Sensors: one condition waiter per sensor, woken by NOTIFY hints, listener reconnects and a fallback poll. */
export {
  createFlagSeeds,
  createFlagSensor,
  createPreviousRunSensor,
  DWH_FLAG_CHANNEL,
  flagDates,
  runKey as previousRunKey,
  RUN_CHANNEL,
  type FlagSeeds,
  type PreviousRunSensorOutput,
  type SensorCheck,
  type SensorNotification,
  type SensorOutput,
} from './sensors.js';
export { createConditionWaiter, type CheckEvent, type CheckReason, type ConditionWaiter, type WaitResult } from './condition-waiter.js';
export { describePreviousRun, previousRunStates, verdictOn, type PreviousRunState, type PreviousRunVerdict } from './previous-run.js';
export { createCheckRecorder, lastChecks, type SensorCheckRecord } from './check-log.js';
