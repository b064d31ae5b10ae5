/**
 * Diagnostic (not part of the suite): where the sensor's reaction time goes. N runs one after another, each parked
 * in wait_for_l2_full_load (its parked snapshot committed, pool idle) before its flag INSERT; per sample, from the
 * INSERT being sent: a bare LISTEN client's NOTIFY (the floor), the runtime hub's NOTIFY, the confirming check
 * (asked for, sent, answered) and the run leaving the sensor (events$). Prints the medians and p90s.
 * `node dist/bench/diag-sensor.js [N]` (default 200); LOG_LEVEL (default info, as the suite's sensor benchmark).
 * Here the floor shares the runtime's database, so one INSERT times both: the raw listener connects after the
 * runtime's and is signalled after it, which puts its figure ~0.1–0.16 ms late (the suite gives the floor its own database).
 */
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { filter } from 'rxjs';
import { startSap, addDaysIso, benchConfig, benchSettings, openDb, percentiles, sleep, startApp, until, within } from './harness.js';

const N = Number(process.argv[2] ?? 200);
const FIRST = '2081-01-01';
const db = await openDb('diagsensor');
const sap = await startSap();
const app = await startApp(benchConfig(db.uri, sap.url, benchSettings(addDaysIso(FIRST, 1), { logLevel: process.env.LOG_LEVEL ?? 'info' })));
const raw = new pg.Client({ connectionString: db.uri, application_name: 'l2flow-bench-raw' });
await raw.connect();
await raw.query('listen l2flow_dwh_flag');
const samples: Record<string, number[]> = { floor: [], hub: [], requested: [], sent: [], answered: [], left: [], 'answered → left': [] };
let t0 = 0;
let marks: Record<string, number> = {};
raw.on('notification', () => (marks.floor ??= performance.now() - t0));
app.hub.notifications$.pipe(filter((n) => n.channel === 'l2flow_dwh_flag')).subscribe(() => (marks.hub ??= performance.now() - t0));
app.sensorChecks$.pipe(filter((c) => c.sensor === 'wait_for_l2_full_load' && c.reason === 'hint')).subscribe((c) => {
  marks.requested ??= c.requestedAt - t0;
  marks.sent ??= c.startedAt - t0;
  marks.answered ??= c.finishedAt - t0;
});
for (let i = 0; i < N; i++) {
  const business = addDaysIso(FIRST, i);
  const logical = addDaysIso(business, 1);
  let parked!: () => void;
  let left!: () => void;
  let done!: () => void;
  const parkedP = new Promise<void>((r) => (parked = r));
  const leftP = new Promise<void>((r) => (left = r));
  const doneP = new Promise<void>((r) => (done = r));
  const sub = app.supervisor.events$.pipe(filter((e) => e.logicalDate === logical)).subscribe((e) => {
    if (e.steps.length === 1 && e.steps[0] === 'wait_for_l2_full_load') parked();
    else if (t0 > 0 && !e.steps.includes('wait_for_l2_full_load') && e.type === 'transition') {
      marks.left ??= performance.now() - t0;
      left();
    }
    if (e.type === 'finished') done();
  });
  t0 = 0;
  await db.pool.query(`insert into l2flow.run (run_id, workflow_id, logical_date, business_date, triggered_by)
    values ($1, $2, $3, $4, 'manual') on conflict do nothing`, [`manual__${logical}`, app.config.workflowId, logical, business]);
  await within(parkedP, 10_000, 'parked');
  await until(async () => (await db.pool.query(`select current_step from l2flow.run where logical_date = $1`, [logical])).rows[0]?.current_step === 'wait_for_l2_full_load', 10_000, 'parked snapshot', 2);
  await until(() => app.pool.waitingCount === 0 && app.pool.idleCount === app.pool.totalCount, 10_000, 'pool idle', 1);
  await sleep(5);
  marks = {};
  t0 = performance.now();
  await db.insertFlag(business);
  await within(leftP, 10_000, 'left');
  await within(doneP, 30_000, 'done');
  sub.unsubscribe();
  if (i >= 20) {
    for (const k of ['floor', 'hub', 'requested', 'sent', 'answered', 'left'] as const) samples[k]!.push(marks[k] ?? NaN);
    samples['answered → left']!.push((marks.left ?? NaN) - (marks.answered ?? NaN));
  }
  await sleep(10);
}
console.log(`N ${N} (first 20 not counted), ms from the flag INSERT sent:`);
for (const [k, v] of Object.entries(samples)) {
  const p = percentiles(v.filter((x) => Number.isFinite(x)));
  console.log(`  ${k.padEnd(16)} p50 ${p.p50.toFixed(3).padStart(7)}  p90 ${p.p90.toFixed(3).padStart(7)}`);
}
await raw.end();
await app.stop();
await sap.close();
await db.drop();
