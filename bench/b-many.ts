/**
 * Many waiting runs, then release all: N runs parked in wait_for_l2_full_load (max_active_runs N) — the process's
 * RSS, its connections, its CPU over an idle window and the fallback poll's queries — then one statement inserts
 * the N flags and every run must leave the sensor.
 */
import { constants, performance, PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';
import { createRuns } from '../src/runtime/run-store.js';
import { FLAG_SENSOR } from './observers.js';
import { startSap, addDaysIso, atMost, benchConfig, benchSettings, FLAG, openDb, report, sleep, startApp, until, type Bench } from './harness.js';

const FIRST_BUSINESS = '2031-01-01';

export const manyBench: Bench = {
  name: 'many',
  title: 'many waiting runs, then release all',
  async run(ctx) {
    const n = ctx.n(1000, 20);
    const pollS = ctx.n(5, 0.5);
    const idleS = ctx.n(20, 1);
    const db = await openDb('many');
    const sap = await startSap();
    try {
      const config = benchConfig(db.uri, sap.url, benchSettings(addDaysIso(FIRST_BUSINESS, 1), { workflow: { maxActiveRuns: n }, pokeIntervalSeconds: pollS }));
      const logical = Array.from({ length: n }, (_, i) => addDaysIso(FIRST_BUSINESS, i + 1));
      await createRuns(db.pool, { workflowId: config.workflowId, dates: logical, triggeredBy: 'backfill' });
      const t0 = performance.now();
      const parked = new Set<string>();
      const left = new Set<string>();
      let lastLeft = 0;
      const checked = new Set<string>();
      const polls: { at: number; keys: number }[] = [];
      const subs: { unsubscribe(): void }[] = [];
      const app = await startApp(config, {
        beforeStart: (a) => {
          subs.push(a.supervisor.events$.subscribe((e) => {
            if (e.steps.length === 1 && e.steps[0] === FLAG_SENSOR) parked.add(e.runId);
            else if (parked.has(e.runId) && !e.steps.includes(FLAG_SENSOR) && !left.has(e.runId)) {
              left.add(e.runId);
              lastLeft = performance.now();
            }
          }));
          subs.push(a.sensorChecks$.subscribe((c) => {
            if (c.sensor !== FLAG_SENSOR) return;
            for (const k of c.keys) checked.add(k);
            if (c.reason === 'poll') polls.push({ at: performance.now(), keys: c.keys.length });
          }));
        },
      });
      try {
        const idlePool = () => app.pool.waitingCount === 0 && app.pool.idleCount === app.pool.totalCount;
        await until(() => parked.size === n && checked.size === n && idlePool(), ctx.n(180_000, 60_000), `${n} runs parked`, 50).catch(async (err: Error) => {
          const { rows } = await db.pool.query(`select status, current_step, count(*)::int as n from l2flow.run group by 1, 2`);
          throw new Error(`${err.message} (parked ${parked.size}, checked ${checked.size}, pool ${app.pool.totalCount - app.pool.idleCount} busy; runs ${JSON.stringify(rows)})`);
        });
        const parkedMs = performance.now() - t0;
        await sleep(1000); // the last snapshot writes and the sensor-check records
        global.gc?.();
        const mem = process.memoryUsage();
        const { rows } = await db.pool.query<{ app: string; n: number }>(
          `select application_name as app, count(*)::int as n from pg_stat_activity where datname = $1 and application_name not like 'l2flow-bench%' group by 1 order by 1`,
          [db.name],
        );
        const connections = rows.reduce((t, r) => t + r.n, 0);
        // Idle window: nothing happens but the claim loop, the mail poll and the fallback poll.
        const pollsBefore = polls.length;
        const gcs: PerformanceEntry[] = [];
        const gcObserver = new PerformanceObserver((list) => gcs.push(...list.getEntries()));
        gcObserver.observe({ entryTypes: ['gc'] });
        const cpu0 = process.cpuUsage();
        const w0 = performance.now();
        await sleep(idleS * 1000);
        const cpu = process.cpuUsage(cpu0);
        gcObserver.disconnect();
        const windowMs = performance.now() - w0;
        const cpuPct = ((cpu.user + cpu.system) / 1000 / windowMs) * 100;
        const inWindow = polls.slice(pollsBefore);
        // Rounded, not floored: a timer may end the window a millisecond early (19,999 ms holds 4 polls of 5 s, not 3).
        const intervals = windowMs / (pollS * 1000);
        // Release all: one statement inserts the N flags.
        const sent = performance.now();
        await db.inserter.query(
          `insert into md.dwh_flag (flag_cd, bussines_date) select $1, d::date from generate_series($2::date, $3::date, interval '1 day') d`,
          [FLAG, FIRST_BUSINESS, addDaysIso(FIRST_BUSINESS, n - 1)],
        );
        const acked = performance.now();
        await until(() => left.size === n, 60_000, `${n} runs leaving the sensor`, 2);
        const releaseMs = lastLeft - sent;
        return {
          samples: n,
          figures: [
            // The target is in MB (10^6 bytes), the stricter reading of it: 150 MB = 143.05 MiB.
            atMost('RSS, runs parked', mem.rss / 1e6, 'MB', 150, '≤ 150 MB'),
            atMost('connections (pg_stat_activity)', connections, 'count', config.poolSize + 2, `≤ pool size (${config.poolSize}) + 2`),
            atMost('CPU while idle', cpuPct, '%', 1, '≤ 1 % of a core'),
            atMost('fallback poll queries per interval', inWindow.length / Math.max(1, Math.round(intervals)), 'count', 1, '1 query per interval for all runs'),
            report('runs per fallback poll query', Math.max(0, ...inWindow.map((p) => p.keys)), 'count'),
            atMost('release all: last run leaves the sensor', releaseMs, 'ms', 1000, '≤ 1 s'),
            report('time to park all runs from start', parkedMs, 'ms'),
          ],
          notes: [
            `${n} runs; RSS is the whole process of this benchmark (runtime + harness): ${(mem.rss / 2 ** 20).toFixed(1)} MiB, ` +
              `heap used ${(mem.heapUsed / 2 ** 20).toFixed(1)} MiB of ${(mem.heapTotal / 2 ** 20).toFixed(1)}, external ${(mem.external / 2 ** 20).toFixed(1)} MiB; ` +
              `connections by application_name: ${rows.map((r) => `${r.app} ${r.n}`).join(', ')}`,
            `idle window ${(windowMs / 1000).toFixed(1)} s with the fallback poll every ${pollS} s: ${inWindow.length} poll queries ` +
              `(counted from App.sensorChecks$; pg_stat_statements is not preloaded here), CPU ${cpuPct.toFixed(2)} % of a core; ` +
              `garbage collections in it: ${gcNote(gcs)}`,
            `release: the INSERT of ${n} flags took ${(acked - sent).toFixed(1)} ms to commit; last run left ${releaseMs.toFixed(1)} ms after it was sent`,
          ],
        };
      } finally {
        for (const x of subs) x.unsubscribe();
        await app.stop();
      }
    } finally {
      await sap.close();
      await db.drop();
    }
  },
};

/** The GC pauses of a window by kind (main thread; V8's concurrent marking threads count in the CPU, not here). */
function gcNote(entries: PerformanceEntry[]): string {
  if (entries.length === 0) return 'none';
  const kinds: Record<number, string> = {
    [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major', [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
    [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental', [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weak callbacks',
  };
  const by = new Map<string, { n: number; ms: number }>();
  for (const e of entries) {
    const kind = kinds[((e as { detail?: { kind?: number } }).detail)?.kind ?? -1] ?? 'other';
    const k = by.get(kind) ?? { n: 0, ms: 0 };
    by.set(kind, { n: k.n + 1, ms: k.ms + e.duration });
  }
  return [...by].map(([kind, { n, ms }]) => `${n} ${kind} (${ms.toFixed(1)} ms)`).join(', ');
}
