/**
 * Benchmarks of whole processes and of persistence:
 * - backfill: 365 dates with their flags present, each waiting on the previous date's success, max_active_runs 20,
 *   through `l2flow backfill` (a child process) while the runtime runs in this one;
 * - startup: `node bin/l2flow.js run` from spawn to its "l2flow running" line, and the idle process's RSS;
 * - persistence: one snapshot write (saveProgress), bytes per snapshot, transitions and writes per run.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createPool } from '../src/runtime/databases.js';
import { BIN, CLI_NODE_FLAGS, startSap, addDaysIso, atMost, benchConfig, benchEnv, benchSettings, FLAG, openDb, percentiles, report, sampleInterleaved, sleep, startApp, type Bench, type BenchDb } from './harness.js';
import { runProbe } from './run-probe.js';
import { diff, installCounters, snapshot } from './counters.js';

/** The environment of an `l2flow` child process: the bench's settings as a JSON L2FLOW_CONFIG file. */
function cliEnv(db: BenchDb, sapUrl: string, settings: object): { env: NodeJS.ProcessEnv; cleanup(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'l2flow-bench-'));
  const file = path.join(dir, 'l2flow.json');
  writeFileSync(file, JSON.stringify(settings));
  return { env: { PATH: process.env.PATH, ...benchEnv(db.uri, sapUrl), L2FLOW_CONFIG: file }, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Chains of the backfill benchmark: its wall time is their median (host noise moves one chain by a second). A short
 * chain first, not measured, warms the runtime up as a long-running `l2flow run` is (JIT, prepared statements).
 */
const BACKFILL_CHAINS = 3;
const WARM_UP_DATES = 20;

export const backfillBench: Bench = {
  name: 'backfill',
  title: 'backfill chain (365 dates through `l2flow backfill`, median of 3)',
  async run(ctx) {
    const days = ctx.n(365, 10);
    const chains = ctx.smoke ? 1 : BACKFILL_CHAINS;
    const first = '2051-01-02';
    const db = await openDb('backfill');
    const sap = await startSap();
    const settings = benchSettings(first, { workflow: { maxActiveRuns: 20 }, logLevel: 'warn' });
    const cli = cliEnv(db, sap.url, settings);
    try {
      // One runtime, one database, chains one after another: chain k's first date waits for chain k-1's last; the
      // warm-up chain's dates come first.
      const warmUp = ctx.smoke ? 0 : WARM_UP_DATES;
      await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) select $1, d::date from generate_series($2::date, $3::date, interval '1 day') d`, [
        FLAG, addDaysIso(first, -1), addDaysIso(first, warmUp + days * chains - 2),
      ]);
      installCounters();
      const app = await startApp(benchConfig(db.uri, sap.url, settings));
      try {
        const walls: number[] = [];
        const phases: string[] = [];
        let before = snapshot();
        for (let k = -1; k < chains; k++) {
          if (k === -1 && warmUp === 0) continue;
          const from = k === -1 ? first : addDaysIso(first, warmUp + days * k);
          const last = k === -1 ? addDaysIso(first, warmUp - 1) : addDaysIso(from, days - 1);
          const t0 = performance.now();
          /** When the CLI said it follows (its start, the runs created), when the last run succeeded, when it exited. */
          let followingAt = NaN;
          let lastSuccessAt = NaN;
          const successes = app.supervisor.events$.subscribe((e) => {
            if (e.type === 'finished' && e.logicalDate === last) lastSuccessAt = performance.now();
          });
          const { code, out } = await new Promise<{ code: number | null; out: string }>((resolve, reject) => {
            const child = spawn(process.execPath, [...CLI_NODE_FLAGS, BIN, 'backfill', '--from', from, '--to', last], { env: cli.env, stdio: ['ignore', 'pipe', 'pipe'] });
            let out = '';
            child.stdout.on('data', (d: Buffer) => {
              out += d.toString();
              if (Number.isNaN(followingAt) && out.includes('following ')) followingAt = performance.now();
            });
            child.stderr.on('data', (d: Buffer) => (out += d.toString()));
            child.on('error', reject);
            child.on('exit', (c) => resolve({ code: c, out }));
          });
          const exitedAt = performance.now();
          successes.unsubscribe();
          if (code !== 0) throw new Error(`l2flow backfill exited ${code}: ${out.slice(-400)}`);
          if (k === -1) {
            before = snapshot();
            continue;
          }
          walls.push((exitedAt - t0) / 1000);
          phases.push(`${((exitedAt - t0) / 1000).toFixed(2)} s = start + runs created ${((followingAt - t0) / 1000).toFixed(2)}, ` +
            `chain ${((lastSuccessAt - followingAt) / 1000).toFixed(2)}, exit ${((exitedAt - lastSuccessAt) / 1000).toFixed(2)}`);
        }
        const c = diff(before, snapshot());
        const runs = days * chains;
        const { rows } = await db.pool.query<{ n: number }>(`select count(*)::int as n from l2flow.run where status = 'success'`);
        if (rows[0]?.n !== runs + warmUp) throw new Error(`benchmark: ${rows[0]?.n} of ${runs + warmUp} runs succeeded`);
        const wallS = percentiles(walls).p50;
        return {
          samples: runs,
          figures: [
            atMost('wall time', wallS, 's', 6, '≤ 6 s'), report('runs per second', days / wallS, 'count'),
            report('round trips per run', c.roundTrips / runs, 'count'), report('lock connection statements per run', c.lockStatements / runs, 'count'),
          ],
          notes: [`${chains} chain(s) of ${days} dates after a warm-up chain of ${warmUp}, ${rows[0]?.n} runs success; wall time (the median) from spawning \`l2flow backfill\` to its exit, each: ${phases.join('; ')}; runtime log level warn`],
        };
      } finally {
        await app.stop();
      }
    } finally {
      cli.cleanup();
      await sap.close();
      await db.drop();
    }
  },
};

/** User + system CPU of a live process so far, from /proc/<pid>/stat (clock ticks of 10 ms). */
function cpuOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10; // fields 14 and 15 (utime, stime), counted after the command name
}

export const startupBench: Bench = {
  name: 'startup',
  title: 'start-up and idle (`l2flow run`)',
  async run(ctx) {
    const db = await openDb('startup');
    const sap = await startSap();
    const cli = cliEnv(db, sap.url, benchSettings('2061-01-01'));
    const readyMs: number[] = [];
    /** The process's own CPU (user + system) until ready: what start-up costs, whatever else the machine runs. */
    const cpuMs: number[] = [];
    let rssMiB = 0;
    try {
      for (let i = 0; i < ctx.n(5, 1); i++) {
        const t0 = performance.now();
        const child = spawn(process.execPath, [...CLI_NODE_FLAGS, BIN, 'run'], { env: cli.env, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`l2flow run not ready in 15 s: ${out.slice(-400)}`)), 15_000);
          child.stdout.on('data', (d: Buffer) => {
            out += d.toString();
            if (out.includes('l2flow running')) {
              clearTimeout(timer);
              resolve();
            }
          });
          child.stderr.on('data', (d: Buffer) => (out += d.toString()));
        });
        readyMs.push(performance.now() - t0);
        cpuMs.push(cpuOf(child.pid!));
        if (i === 0) {
          await sleep(ctx.n(5000, 200)); // idle
          const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
          rssMiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? Number.NaN) / 1024;
        }
        child.kill('SIGTERM');
        await exited;
      }
      const p = percentiles(readyMs);
      return {
        samples: readyMs.length,
        figures: [
          atMost('ready (median of starts)', p.p50, 'ms', 1000, '≤ 1 s'), report('ready, slowest start', p.max, 'ms'),
          report('CPU until ready (median)', percentiles(cpuMs).p50, 'ms'), report('idle RSS', rssMiB, 'MiB'),
        ],
        notes: [`from spawn to the "l2flow running" log line, ${readyMs.length} starts; idle RSS from /proc after ${ctx.n(5, 0.2)} s idle, http off`],
      };
    } finally {
      cli.cleanup();
      await sap.close();
      await db.drop();
    }
  },
};

export const persistenceBench: Bench = {
  name: 'persistence',
  title: 'persistence (snapshot writes)',
  async run(ctx) {
    const runs = ctx.n(50, 3);
    const db = await openDb('persist');
    const sap = await startSap();
    const config = benchConfig(db.uri, sap.url, benchSettings('2071-01-02'));
    const pool = createPool(config);
    const writes: { ms: number; bytes: number }[] = [];
    const query = pool.query.bind(pool) as (text: unknown, values?: unknown[]) => Promise<unknown>;
    (pool as unknown as { query: typeof query }).query = async (text, values) => {
      // Hot statements are named configs ({ name, text, values }), others a text and its values.
      const config = typeof text === 'object' && text !== null ? (text as { text?: string; values?: unknown[] }) : null;
      const sql = config ? (config.text ?? '') : typeof text === 'string' ? text : '';
      if (!sql.includes('update l2flow.run') || !sql.includes('snapshot = $7')) return query(text, values);
      const t = performance.now();
      const r = await query(text, values);
      writes.push({ ms: performance.now() - t, bytes: Buffer.byteLength(String((config?.values ?? values)?.[6] ?? '')) });
      return r;
    };
    const transitions = new Map<string, number>();
    const app = await startApp(config, { pool, beforeStart: (a) => void a.supervisor.events$.subscribe((e) => transitions.set(e.runId, (transitions.get(e.runId) ?? 0) + 1)) });
    try {
      const probe = await runProbe({ app, db, firstBusinessDate: '2071-01-01', until: 'success', name: 'run' });
      await sampleInterleaved([probe], runs, 0);
      await probe.close();
      await sleep(200);
      const w = percentiles(writes.map((x) => x.ms));
      const b = percentiles(writes.map((x) => x.bytes));
      const perRun = percentiles([...transitions.values()]);
      const { rows } = await db.pool.query<{ n: number }>(`select avg(octet_length(snapshot::text))::int as n from l2flow.run`);
      return {
        samples: runs,
        figures: [
          report('snapshot write p50', w.p50, 'ms'),
          report('snapshot write p99', w.p99, 'ms'),
          report('bytes per snapshot p50', b.p50, 'bytes'),
          report('bytes per snapshot max', b.max, 'bytes'),
          report('transitions per run (events$)', perRun.p50, 'count'),
          report('snapshot writes per run', writes.length / runs, 'count'),
        ],
        notes: [`a write is saveProgress (run row + step rows, one statement) incl. the pool checkout; stored final snapshot ${rows[0]?.n} bytes on average`],
      };
    } finally {
      await app.stop();
      await sap.close();
      await db.drop();
    }
  },
};
