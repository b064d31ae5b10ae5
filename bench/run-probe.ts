/**
 * A real l2flow run as a probe: sample i queues the run of business date first + i, waits until it is parked in
 * wait_for_l2_full_load (first check answered, the parked snapshot committed, pool idle), and the flag INSERT fires
 * it: as a run in production, parked for hours, whose snapshot write (~20 ms after it parked) is long done. "Seen" is either the run
 * leaving the sensor (events$) or its `success` being committed (the l2flow_run NOTIFY of that status).
 */
import { performance } from 'node:perf_hooks';
import { filter } from 'rxjs';
import type { App } from '../src/runtime/app.js';
import { createRun, getRunByDate } from '../src/runtime/run-store.js';
import { RUN_CHANNEL } from '../src/services/sensors/sensors.js';
import type { RunEvent } from '../src/runtime/supervisor.js';
import { noteFlagChecks } from './observers.js';
import { addDaysIso, within, type BenchDb, type Probe } from './harness.js';

const SENSOR_STEP = 'wait_for_l2_full_load';

/**
 * Where one sample's time went on the sensor's path (ms, performance clock): from the flag INSERT sent to the
 * confirming check sent, the check's round trip, and from its answer to the run leaving the sensor (events$).
 */
export interface SensorPath {
  sample: number;
  checkSent: number;
  checkRoundTrip: number;
  answerToLeft: number;
}

export async function runProbe(o: { app: App; db: BenchDb; firstBusinessDate: string; until: 'sensor' | 'success'; name: string }): Promise<Probe & { succeeded(): number; paths(): SensorPath[] }> {
  const { app, db } = o;
  const checks = noteFlagChecks(app.pool);
  const checksSub = app.sensorChecks$.subscribe(checks.onCheck);
  // Committed success: the run row's trigger notifies after commit. Heard on the runtime's own LISTEN connection: a
  // listener of the bench's in the runtime's database would be woken by every flag INSERT too (see probeInOwnDb in harness.ts).
  const successAt = new Map<string, (t: number) => void>();
  const parkedSaved = new Map<string, () => void>();
  const runNotifications = app.hub.notifications$.pipe(filter((n) => n.channel === RUN_CHANNEL)).subscribe((n) => {
    const t = performance.now();
    const p = (n.payload ?? {}) as { logical_date?: string; status?: string; current_step?: string };
    if (p.status === 'success' && p.logical_date) successAt.get(p.logical_date)?.(t);
    if (p.status === 'running' && p.current_step === SENSOR_STEP && p.logical_date) parkedSaved.get(p.logical_date)?.();
  });
  let succeeded = 0;
  const paths: SensorPath[] = [];
  return {
    name: o.name,
    succeeded: () => succeeded,
    paths: () => paths,
    async arm(i) {
      const businessDate = addDaysIso(o.firstBusinessDate, i);
      const logicalDate = addDaysIso(businessDate, 1);
      let parked = false;
      let firedAt = NaN;
      let leftAt = NaN;
      let onParked!: () => void;
      let onLeft!: (t: number) => void;
      let onEnd!: (e: RunEvent) => void;
      const parkedP = new Promise<void>((r) => (onParked = r));
      const left = new Promise<number>((r) => (onLeft = r));
      const ended = new Promise<RunEvent>((r) => (onEnd = r));
      const committed = new Promise<number>((r) => successAt.set(logicalDate, r));
      const saved = new Promise<void>((r) => parkedSaved.set(logicalDate, r));
      const sub = app.supervisor.events$.pipe(filter((e) => e.logicalDate === logicalDate)).subscribe((e) => {
        const t = performance.now();
        if (!parked && e.steps.length === 1 && e.steps[0] === SENSOR_STEP) {
          parked = true;
          onParked();
        } else if (parked && !e.steps.includes(SENSOR_STEP)) {
          if (Number.isNaN(leftAt)) leftAt = t;
          onLeft(t);
        }
        if (e.type === 'finished' || e.type === 'released') {
          sub.unsubscribe();
          onEnd(e);
        }
      });
      const { created } = await createRun(app.pool, { workflowId: app.config.workflowId, logicalDate, businessDate, triggeredBy: 'manual' });
      if (!created) throw new Error(`benchmark: a run for ${logicalDate} already exists`);
      await within(
        Promise.race([parkedP, ended.then((e) => Promise.reject(new Error(`run ${logicalDate} ended ${e.status} before parking`)))]),
        10_000,
        `run ${logicalDate} parking in ${SENSOR_STEP}`,
      );
      await within(saved, 10_000, `run ${logicalDate}'s parked snapshot`);
      parkedSaved.delete(logicalDate);
      await checks.quiet(businessDate, 10_000);
      return {
        fire: () => {
          firedAt = performance.now();
          return db.insertFlag(businessDate);
        },
        seen: o.until === 'sensor' ? left : committed,
        async done() {
          const e = await within(ended, 30_000, `run ${logicalDate} finishing`);
          if (o.until === 'success') await within(committed, 30_000, `run ${logicalDate} success committed`);
          successAt.delete(logicalDate);
          // The check that let the run go: the last one covering its date, sent after the INSERT.
          const check = checks.lastCheck(businessDate);
          if (check && check.sent > firedAt && !Number.isNaN(leftAt)) {
            paths.push({ sample: i, checkSent: check.sent - firedAt, checkRoundTrip: check.done - check.sent, answerToLeft: leftAt - check.done });
          }
          checks.forget(businessDate);
          if (e.status !== 'success') {
            const row = await getRunByDate(app.pool, app.config.workflowId, logicalDate);
            throw new Error(`benchmark: run ${logicalDate} ended ${row?.status ?? e.status}: ${row?.error?.message ?? e.type}`);
          }
          succeeded += 1;
        },
      };
    },
    async close() {
      checksSub.unsubscribe();
      checks.stop();
      runNotifications.unsubscribe();
    },
  };
}
