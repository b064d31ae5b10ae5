/**
 * How long after a flag row is committed does a real l2flow run leave wait_for_l2_full_load, compared with a
 * bare LISTEN client (the trigger-to-NOTIFY round trip) measured in the same process, interleaved?
 * Run: `npm run bench:sensor` (builds, then `node dist/bench/sensor-latency.js [--samples 300]`).
 * Uses a fresh database on 127.0.0.1 (dropped afterwards) unless L2FLOW_BENCH_DB_URI names one.
 * See BENCHMARKS.md for what the figures mean.
 */
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import pg from 'pg';
import { migrate } from '../src/runtime/migrate.js';
import { parseFlags } from '../src/runtime/args.js';
import { addDays } from '../src/lib/dates.js';
import { FLAG, bareSensor, rawListener, sleep, type Marks, type Observer } from './observers.js';
import { memory, report, type Memory, type Sample } from './report.js';
import { runObserver } from './run-observer.js';

const ADMIN_URI = 'postgres://root@127.0.0.1:5432/postgres';
/** Pause between arming and inserting, the same for every observer: an idle connection is slower than a hot one. */
const SETTLE_MS = 5;
/** Pause after each sample, so the tail of one (a run's last writes, the claim loop) does not overlap the next. */
const QUIET_MS = 10;
const TARGET_MS = 5;
const round2 = (x: number) => Math.round(x * 100) / 100;

interface Options {
  samples: number;
  warmup: number;
  logLevel: string;
  appLog: string;
  bare: boolean;
}

function options(argv: string[]): Options {
  const f = parseFlags('bench:sensor', argv, [
    { name: 'samples', type: 'string', description: 'measured samples per observer, default 300' },
    { name: 'warmup', type: 'string', description: 'unmeasured samples per observer first, default 20' },
    { name: 'log-level', type: 'string', description: "the runtime's log level, default info (as in production)" },
    { name: 'app-log', type: 'string', description: "file the runtime's log goes to, default /dev/null" },
    { name: 'no-bare', type: 'boolean', description: 'skip the sensor-alone observer' },
  ]);
  const int = (name: string, dflt: number, min: number) => {
    const v = f[name] === undefined ? dflt : Number(f[name]);
    if (!Number.isInteger(v) || v < min) throw new Error(`--${name} wants an integer >= ${min}`);
    return v;
  };
  return {
    samples: int('samples', 300, 1),
    warmup: int('warmup', 20, 0),
    logLevel: (f['log-level'] as string | undefined) ?? 'info',
    appLog: (f['app-log'] as string | undefined) ?? '/dev/null',
    bare: f['no-bare'] !== true,
  };
}

async function openDatabase(): Promise<{ uri: string; drop(): Promise<void> }> {
  const given = process.env.L2FLOW_BENCH_DB_URI;
  if (given) return { uri: given, drop: async () => undefined };
  const name = `l2flow_bench_${randomBytes(4).toString('hex')}`;
  const admin = async (sql: string) => {
    const c = new pg.Client({ connectionString: ADMIN_URI });
    await c.connect();
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  };
  await admin(`create database ${name}`);
  return { uri: ADMIN_URI.replace(/\/[^/]*$/, `/${name}`), drop: () => admin(`drop database if exists ${name} with (force)`) };
}

/** Round r visits every observer once; the order rotates and flips so machine drift hits all alike. */
function order<T>(items: T[], r: number): T[] {
  const k = items.length;
  const rotated = items.map((_, i) => items[(i + r) % k]!);
  return Math.floor(r / k) % 2 ? rotated.reverse() : rotated;
}

async function main(): Promise<void> {
  const opt = options(process.argv.slice(2));
  const started = performance.now();
  const loadStart = os.loadavg()[0]!;
  // Every GC pause of this process (runtime and observers share it), to attribute the tail.
  const gcs: { start: number; end: number }[] = [];
  const gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push({ start: e.startTime, end: e.startTime + e.duration });
  });
  gcObserver.observe({ entryTypes: ['gc'] });
  const db = await openDatabase();
  const pool = new pg.Pool({ connectionString: db.uri, max: 2, application_name: 'l2flow-bench' });
  // pool.end() resolves before every backend is gone; the forced drop may then kill one mid-close.
  pool.on('error', () => undefined);
  const observers: Observer[] = [];
  let inserter: pg.Client | undefined;
  try {
    await migrate(pool, { flagTable: 'md.dwh_flag' });
    const { rows } = await pool.query<{ version: string }>(`select current_setting('server_version') as version`);
    inserter = new pg.Client({ connectionString: db.uri, application_name: 'l2flow-bench-insert' });
    await inserter.connect();
    // Disjoint date ranges: one observer's flag must never satisfy another's wait.
    observers.push(await rawListener(db.uri, '2001-01-01'));
    if (opt.bare) observers.push(await bareSensor(db.uri, '2011-01-01'));
    const run = await runObserver({ uri: db.uri, firstDate: '2021-01-01', logLevel: opt.logLevel, logFile: opt.appLog });
    observers.push(run);
    const results = new Map<string, Sample[]>(observers.map((o) => [o.name, []]));

    let afterWarmup: Memory = memory();
    const rounds = opt.warmup + opt.samples;
    for (let r = 0; r < rounds; r++) {
      if (r === opt.warmup) afterWarmup = memory();
      for (const o of order(observers, r)) {
        const date = addDays(o.firstDate, r);
        const armed = await o.arm(date);
        await sleep(SETTLE_MS);
        const sent = performance.now();
        await inserter.query('insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)', [FLAG, date]);
        const acked = performance.now();
        const at = await armed.seen;
        const m = armed.marks?.() ?? {};
        await armed.done?.();
        if (r >= opt.warmup) {
          const marks: Marks = {};
          for (const k of Object.keys(m) as (keyof Marks)[]) if (m[k] !== undefined) marks[k] = m[k] - acked;
          results.get(o.name)!.push({ fromSend: at - sent, fromAck: at - acked, marks, window: [sent, at], gcMs: 0 });
        }
        await sleep(QUIET_MS);
      }
    }
    const end = memory();
    await sleep(50); // GC entries are delivered asynchronously
    gcObserver.disconnect();
    for (const list of results.values()) {
      for (const smp of list) {
        const [from, to] = smp.window;
        smp.gcMs = gcs.reduce((sum, g) => sum + Math.max(0, Math.min(to, g.end) - Math.max(from, g.start)), 0);
      }
    }
    const cpus = os.cpus();
    const ok = report(
      {
        samples: opt.samples,
        warmup: opt.warmup,
        postgres: rows[0]?.version ?? '?',
        node: process.version,
        cpus: cpus.length,
        cpuModel: cpus[0]?.model.trim() ?? '?',
        logLevel: opt.logLevel,
        targetMs: TARGET_MS,
        baseline: observers[0]!.name,
        subject: run.name,
        memory: { afterWarmup, end },
        runs: run.counts(),
        durationS: Math.round((performance.now() - started) / 100) / 10,
        gc: {
          pauses: gcs.length,
          totalMs: round2(gcs.reduce((t, g) => t + g.end - g.start, 0)),
          longestMs: round2(Math.max(0, ...gcs.map((g) => g.end - g.start))),
        },
        load: { start: round2(loadStart), end: round2(os.loadavg()[0]!) },
      },
      observers.map((o) => o.name),
      results,
    );
    if (!ok) process.exitCode = 3;
  } finally {
    await inserter?.end().catch(() => undefined);
    for (const o of observers) await o.close().catch((err: unknown) => console.error(`closing ${o.name}:`, err));
    await pool.end();
    await db.drop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
