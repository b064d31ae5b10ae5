/**
 * How long after a flag row is committed does l2flow notice it, compared with a bare LISTEN client?
 * Run: `npm run build && node dist/bench/sensor-latency.js [--samples 300]`.
 * Uses a fresh database on 127.0.0.1 (dropped afterwards) unless L2FLOW_BENCH_DB_URI names one.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { pino } from 'pino';
import { migrate } from '../src/runtime/migrate.js';
import { createNotificationHub } from '../src/runtime/notification-hub.js';
import { addDays } from '../src/services/dates.js';
import { DWH_FLAG_CHANNEL, RUN_CHANNEL, createFlagSensor } from '../src/services/sensors.js';
import type { SensorInput } from '../src/services/types.js';

const FLAG = 'l1_to_l2_load_successfull';
const ADMIN_URI = 'postgres://root@127.0.0.1:5432/postgres';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Pause between arming and inserting, the same for every observer: an idle connection is slower than a hot one. */
const SETTLE_MS = 5;

/**
 * Something that notices a flag for a business date. `arm` starts the wait; within SETTLE_MS after it returns
 * the observer must be parked (first check done). `seen` resolves with performance.now() at the moment it
 * noticed. Swap in e.g. a whole actor here, resolving `seen` when it leaves the sensor's state.
 */
export interface Observer {
  name: string;
  arm(businessDate: string): Promise<{ seen: Promise<number> }>;
  close(): Promise<void>;
}

interface Sample {
  fromSend: number;
  fromAck: number;
}

/** A bare pg client LISTENing on the flag channel: the floor any event-driven sensor can reach. */
async function rawListener(uri: string): Promise<Observer> {
  const client = new pg.Client({ connectionString: uri, application_name: 'l2flow-bench-raw' });
  await client.connect();
  const expected = new Map<string, (t: number) => void>();
  client.on('notification', (n) => {
    const t = performance.now();
    const date = (JSON.parse(n.payload ?? '{}') as { business_date?: string }).business_date ?? '';
    expected.get(date)?.(t);
    expected.delete(date);
  });
  await client.query(`listen ${DWH_FLAG_CHANNEL}`);
  return {
    name: 'raw LISTEN',
    arm: async (date) => ({ seen: new Promise<number>((resolve) => expected.set(date, resolve)) }),
    close: () => client.end(),
  };
}

/** l2flow's path: notification hub → flag sensor (60 s poll, so only NOTIFY can be this fast). */
async function l2flowSensor(uri: string, pool: pg.Pool): Promise<Observer> {
  const logger = pino({ level: 'warn' }, pino.destination(2));
  const hub = createNotificationHub({ connectionString: uri, channels: [DWH_FLAG_CHANNEL, RUN_CHANNEL], logger });
  await hub.start();
  const sensor = createFlagSensor({ pool, notifications$: hub.notifications$, reconnects$: hub.connected$, logger, pokeIntervalMs: 60_000 });
  const signal = new AbortController().signal;
  return {
    name: 'l2flow sensor',
    async arm(date) {
      const input: SensorInput = {
        runId: `bench-${date}`,
        workflowId: 'WF_MAIN_DATASETS_LOAD_L2_TO_L2',
        logicalDate: addDays(date, 1),
        businessDate: date,
        attempt: 1,
        loadId: null,
        deadline: Date.now() + 60_000,
      };
      return { seen: sensor(input, signal).then(() => performance.now()) };
    },
    close: () => hub.stop(),
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

function percentiles(values: number[]) {
  const s = [...values].sort((a, b) => a - b);
  const at = (p: number) => s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)] ?? Number.NaN;
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return { p50: r(at(50)), p90: r(at(90)), p99: r(at(99)), max: r(s[s.length - 1] ?? Number.NaN) };
}

type Stats = ReturnType<typeof percentiles>;

function main(): Promise<void> {
  const i = process.argv.indexOf('--samples');
  const samples = i > 0 ? Number(process.argv[i + 1]) : 300;
  if (!Number.isInteger(samples) || samples < 1) throw new Error('--samples wants a positive integer');
  return run(samples);
}

async function run(samples: number): Promise<void> {
  const db = await openDatabase();
  const pool = new pg.Pool({ connectionString: db.uri, max: 4, application_name: 'l2flow-bench' });
  const observers: Observer[] = [];
  try {
    await migrate(pool, { flagTable: 'md.dwh_flag' });
    const inserter = new pg.Client({ connectionString: db.uri, application_name: 'l2flow-bench-insert' });
    await inserter.connect();
    observers.push(await rawListener(db.uri), await l2flowSensor(db.uri, pool));
    const results = new Map<string, Sample[]>(observers.map((o) => [o.name, []]));
    const { rows } = await pool.query<{ version: string }>(`select current_setting('server_version') as version`);

    const warmup = 20;
    let day = 0;
    for (let n = 0; n < 2 * (samples + warmup); n++) {
      // Interleaved, and the order flips every pair, so drift in the machine's load hits both alike.
      const observer = observers[(n + (Math.floor(n / 2) % 2)) % 2]!;
      const date = addDays('2001-01-01', day++);
      const { seen } = await observer.arm(date);
      await sleep(SETTLE_MS);
      const sent = performance.now();
      await inserter.query('insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)', [FLAG, date]);
      const acked = performance.now();
      const at = await seen;
      if (n >= 2 * warmup) results.get(observer.name)!.push({ fromSend: at - sent, fromAck: at - acked });
    }
    await inserter.end();
    report(samples, rows[0]?.version ?? '?', observers, results);
  } finally {
    for (const o of observers) await o.close().catch(() => undefined);
    await pool.end();
    await db.drop();
  }
}

function report(samples: number, version: string, observers: Observer[], results: Map<string, Sample[]>): void {
  const stats = new Map<string, { fromSend: Stats; fromAck: Stats }>();
  for (const o of observers) {
    const r = results.get(o.name) ?? [];
    stats.set(o.name, { fromSend: percentiles(r.map((s) => s.fromSend)), fromAck: percentiles(r.map((s) => s.fromAck)) });
  }
  const [base, subject] = observers.map((o) => stats.get(o.name)!);
  const diff = (k: 'fromSend' | 'fromAck') => {
    const out = {} as Stats;
    for (const p of ['p50', 'p90', 'p99', 'max'] as const) out[p] = Math.round((subject![k][p] - base![k][p]) * 1000) / 1000;
    return out;
  };
  const row = (label: string, s: Stats) =>
    `${label.padEnd(42)}${[s.p50, s.p90, s.p99, s.max].map((v) => v.toFixed(3).padStart(9)).join('')}`;
  const lines = [
    `sensor latency: ${samples} samples each, interleaved, PostgreSQL ${version} on 127.0.0.1 (ms)`,
    `${''.padEnd(42)}${['p50', 'p90', 'p99', 'max'].map((h) => h.padStart(9)).join('')}`,
  ];
  for (const o of observers) {
    lines.push(row(`${o.name}, from INSERT sent`, stats.get(o.name)!.fromSend));
    lines.push(row(`${o.name}, from commit ack`, stats.get(o.name)!.fromAck));
  }
  lines.push(row(`difference, from INSERT sent`, diff('fromSend')), row(`difference, from commit ack`, diff('fromAck')));
  console.log(lines.join('\n'));
  console.log(
    JSON.stringify({
      bench: 'sensor-latency',
      samples,
      postgres: version,
      observers: Object.fromEntries(stats),
      difference: { fromSend: diff('fromSend'), fromAck: diff('fromAck') },
    }),
  );
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
