/**
 * Diagnostic (not part of the suite): a backfill chain of N dates (flags present, max_active_runs 20) created in one
 * statement (as `l2flow backfill` does), run by the in-process runtime; prints, per link (run N's success → run
 * N+1's success), the median time of each of run N+1's transitions after run N's success, and when run N+1 was
 * started (claimed) relative to it, the runtime process's CPU per link, and one link's statement waterfall (link 40).
 * `node dist/bench/diag-backfill.js [N]`; env MAX (max_active_runs, default 20: MAX=400 claims every run before the
 * chain gets going, so no claim overlaps a link), SKIP (first link counted, default 21), UNIX=1 (the runtime connects
 * through the Unix socket /var/run/postgresql instead of TCP 127.0.0.1), LOG_LEVEL (default warn).
 */
import { performance } from 'node:perf_hooks';
import { diff, installCounters, snapshot, trace, type QueryCounts } from './counters.js';
import { startSap, addDaysIso, benchConfig, benchSettings, FLAG, openDb, startApp, within } from './harness.js';
import { createRuns } from '../src/runtime/run-store.js';

installCounters();
const N = Number(process.argv[2] ?? 60);
const TRACE_AT = Math.min(40, N - 2);
const first = '2051-01-02';
const dates = Array.from({ length: N }, (_, i) => addDaysIso(first, i));
const db = await openDb('diagbf');
const sap = await startSap();
await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) select $1, d::date from generate_series($2::date, $3::date, interval '1 day') d`, [
  FLAG, addDaysIso(first, -1), addDaysIso(dates[N - 1]!, -1),
]);
const uri = process.env.UNIX ? db.uri.replace('127.0.0.1:5432', '%2Fvar%2Frun%2Fpostgresql') : db.uri;
if (process.env.UNIX) console.log('runtime connects through', uri);
const app = await startApp(benchConfig(uri, sap.url, benchSettings(first, { workflow: { maxActiveRuns: Number(process.env.MAX ?? 20) }, logLevel: process.env.LOG_LEVEL ?? 'warn' })));
/** logical date → event key → first time seen (ms since t0). */
const ev = new Map<string, Map<string, number>>();
let t0 = 0;
let finished = 0;
let countsAt20: QueryCounts | undefined;
let countsEnd: QueryCounts | undefined;
let cpuAt20: { cpu: NodeJS.CpuUsage; t: number } | undefined;
let cpuEnd: { cpu: NodeJS.CpuUsage; t: number } | undefined;
let done!: () => void;
const doneP = new Promise<void>((r) => (done = r));
app.supervisor.events$.subscribe((e) => {
  const m = ev.get(e.logicalDate) ?? ev.set(e.logicalDate, new Map()).get(e.logicalDate)!;
  const key = e.type === 'transition' ? `→ ${e.steps.join(',')}` : `${e.type}:${e.status}`;
  if (!m.has(key)) m.set(key, performance.now() - t0);
  if (trace.on) trace.items.push({ kind: `EVENT ${e.logicalDate} ${key}`, app: '', start: performance.now(), end: performance.now() });
  if (e.type === 'finished' && e.logicalDate === dates[TRACE_AT - 1]) { trace.on = true; trace.items = []; }
  if (e.type === 'finished' && e.logicalDate === dates[TRACE_AT]) trace.on = false;
  if (e.type === 'finished' && finished === 20) { cpuAt20 = { cpu: process.cpuUsage(), t: performance.now() }; countsAt20 = snapshot(); }
  if (e.type === 'finished' && ++finished === N) { cpuEnd = { cpu: process.cpuUsage(cpuAt20!.cpu), t: performance.now() - cpuAt20!.t }; countsEnd = diff(countsAt20!, snapshot()); done(); }
});
t0 = performance.now();
await createRuns(app.pool, { workflowId: app.config.workflowId, dates, triggeredBy: 'backfill' });
const created = performance.now() - t0;
await within(doneP, 600_000, 'chain');
const wall = performance.now() - t0;
const med = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return Math.round(s[Math.floor(s.length / 2)]! * 100) / 100; };
const rel = new Map<string, number[]>();
const links: number[] = [];
for (let i = Number(process.env.SKIP ?? 21); i < N; i++) {
  const prev = ev.get(dates[i - 1]!)!;
  const cur = ev.get(dates[i]!)!;
  const base = prev.get('finished:success')!;
  links.push(cur.get('finished:success')! - base);
  for (const [k, t] of cur) (rel.get(k) ?? rel.set(k, []).get(k)!).push(t - base);
}
console.log(`N ${N}: created in ${created.toFixed(1)} ms, wall ${wall.toFixed(0)} ms, link median ${med(links)} mean ${(links.reduce((a, b) => a + b, 0) / links.length).toFixed(2)} ms (links ${Number(process.env.SKIP ?? 21)}..${N - 1})`);
console.log(`runtime process CPU from the 21st finish to the last: ${((cpuEnd!.cpu.user + cpuEnd!.cpu.system) / 1000 / (N - 21)).toFixed(2)} ms per link (user ${(cpuEnd!.cpu.user / 1000 / (N - 21)).toFixed(2)}), wall ${(cpuEnd!.t / (N - 21)).toFixed(2)} ms per link`);
const per = (x: number) => Math.round((x / (N - 21)) * 100) / 100;
console.log(`statements per link: ${per(countsEnd!.roundTrips)} (${Object.entries(countsEnd!.byConnection).map(([k, v]) => `${k} ${per(v)}`).join(', ')}); NOTIFYs ${per(countsEnd!.notifies)}`);
for (const [k, v] of Object.entries(countsEnd!.byKind).sort((a, b) => b[1] - a[1])) console.log(`  ${per(v).toFixed(2).padStart(6)} ${k}`);
for (const [k, v] of [...rel].sort((a, b) => med(a[1]) - med(b[1]))) console.log(k.padEnd(80), med(v));
const tb = ev.get(dates[TRACE_AT - 1]!)!.get('finished:success')! + t0;
console.log(`waterfall of link ${TRACE_AT} (ms after run ${TRACE_AT - 1}'s success event)`);
for (const it of trace.items) console.log(`${(it.start - tb).toFixed(2).padStart(7)} ${(it.end - tb).toFixed(2).padStart(7)} ${(it.end - it.start).toFixed(2).padStart(6)} ${it.app.padEnd(13)} ${it.kind.slice(0, 90)}`);
await app.stop();
await sap.close();
await db.drop();
