/**
 * The benchmark suite's shared harness: a throwaway database per benchmark, the l2flow runtime configured for a
 * bench, the floor (raw trigger → NOTIFY to a bare LISTEN client), interleaved sampling, and result figures.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createWriteStream, readFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { pino } from 'pino';
import { packageRoot } from '../src/lib/package-root.js';
import { createApp, type App } from '../src/runtime/app.js';
import { loadConfig, type Config } from '../src/runtime/config.js';
import { createLogger } from '../src/runtime/logger.js';
import { migrate } from '../src/runtime/migrate.js';
import { FLAG, rawListener, sleep, type Observer } from './observers.js';

export { FLAG, sleep };
export const ADMIN_URI = 'postgres://root@127.0.0.1:5432/postgres';
export const VIEW = 'wk_export.ds_client_segmentation_last_v';

/** The checkout (from bench/ in the sources and dist/bench/ once built alike). */
export const ROOT = packageRoot(import.meta.url);
/** bin/l2flow.js of this checkout. */
export const BIN = path.join(ROOT, 'bin', 'l2flow.js');

/** The node flags of a launcher whose first line is `#!/usr/bin/env -S node [flags]`. */
export function launcherFlags(text: string): string[] {
  const first = text.slice(0, text.indexOf('\n'));
  const m = /^#!\S*env -S node(?<flags>(?:\s+-\S+)*)\s*$/.exec(first);
  if (!m) throw new Error(`the launcher's first line is not "#!/usr/bin/env -S node [flags]": ${first}`);
  return m.groups!.flags!.trim().split(/\s+/).filter(Boolean);
}

/** The node flags `l2flow` runs with (its launcher's first line): every benchmark runs the runtime as the CLI does. */
export const CLI_NODE_FLAGS = launcherFlags(readFileSync(BIN, 'utf8'));

/** One number a benchmark reports; with a target, `met` says whether it held. */
export interface Figure {
  name: string;
  value: number;
  unit: 'ms' | 's' | 'MiB' | 'MB' | 'bytes' | 'count' | '%' | 'ratio';
  /** The target as text ("≤ floor p50 + 0.7 ms") and its limit in the figure's unit. */
  target?: string;
  limit?: number;
  met?: boolean;
  /** The floor this figure is compared with, measured in the same run, and the ratio figure / floor. */
  floor?: number;
  ratio?: number;
}

export interface BenchResult {
  name: string;
  title: string;
  samples?: number;
  figures: Figure[];
  notes: string[];
  durationS: number;
  /** The process the benchmark ran in (each one runs in its own). */
  pid?: number;
}

export interface BenchContext {
  smoke: boolean;
  /** Pick the smoke or the full count. */
  n(full: number, smoke: number): number;
}

export interface Bench {
  name: string;
  title: string;
  run(ctx: BenchContext): Promise<Omit<BenchResult, 'name' | 'title' | 'durationS'>>;
}

export const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** A figure with an upper limit: met when value ≤ limit. */
export function atMost(name: string, value: number, unit: Figure['unit'], limit: number, target: string, floor?: number): Figure {
  const f: Figure = { name, value: round3(value), unit, target, limit: round3(limit), met: value <= limit };
  if (floor !== undefined) {
    f.floor = round3(floor);
    f.ratio = floor > 0 ? round3(value / floor) : Number.NaN;
  }
  return f;
}

export function report(name: string, value: number, unit: Figure['unit'], floor?: number): Figure {
  const f: Figure = { name, value: round3(value), unit };
  if (floor !== undefined) {
    f.floor = round3(floor);
    f.ratio = floor > 0 ? round3(value / floor) : Number.NaN;
  }
  return f;
}

async function admin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: ADMIN_URI, application_name: 'l2flow-bench-admin' });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

export interface BenchDb {
  uri: string;
  name: string;
  /** A small pool for the bench itself (application_name l2flow-bench). */
  pool: pg.Pool;
  /** A dedicated client that sends the flag INSERTs. */
  inserter: pg.Client;
  insertFlag(businessDate: string): Promise<void>;
  drop(): Promise<void>;
}

/** Create a fresh database, migrate it, add the SAP view; `drop()` removes it. */
export async function openDb(tag: string): Promise<BenchDb> {
  const name = `l2flow_bench_${tag.replace(/\W/g, '_')}_${randomBytes(3).toString('hex')}`;
  await admin(`create database ${name}`);
  const uri = ADMIN_URI.replace(/\/[^/]*$/, `/${name}`);
  const pool = new pg.Pool({ connectionString: uri, max: 3, application_name: 'l2flow-bench' });
  pool.on('error', () => undefined);
  const inserter = new pg.Client({ connectionString: uri, application_name: 'l2flow-bench-insert' });
  try {
    await migrate(pool, { flagTable: 'md.dwh_flag' });
    await pool.query(`create schema if not exists wk_export;
      create table if not exists wk_export.ds_client_segmentation (client_id bigint, segment text);
      create or replace view ${VIEW} as select * from wk_export.ds_client_segmentation;
      insert into wk_export.ds_client_segmentation select g, 'seg' || (g % 3) from generate_series(1, 7) g;`);
    await inserter.connect();
  } catch (err) {
    await pool.end().catch(() => undefined);
    await admin(`drop database if exists ${name} with (force)`);
    throw err;
  }
  return {
    uri,
    name,
    pool,
    inserter,
    insertFlag: async (d) => void (await inserter.query('insert into md.dwh_flag (flag_cd, bussines_date) values ($1, $2)', [FLAG, d])),
    async drop() {
      await inserter.end().catch(() => undefined);
      await pool.end().catch(() => undefined);
      await admin(`drop database if exists ${name} with (force)`);
    },
  };
}

/**
 * The runtime's settings for a bench, as a config file would hold them: production defaults except the bench
 * database and SAP, no HTTP server, a 60 s flag poll (only NOTIFY can be fast), 1 h sensor timeouts, `select 1` children.
 */
export function benchSettings(startDate: string, extra: { workflow?: object; schedule?: object; pokeIntervalSeconds?: number; logLevel?: string } = {}) {
  return {
    workflow: { startDate, ...(extra.workflow ?? {}) },
    sensors: {
      wait_for_l2_full_load: { flagTable: 'md.dwh_flag', flagCode: FLAG, pokeIntervalSeconds: extra.pokeIntervalSeconds ?? 60, timeoutSeconds: 3600 },
      wait_for_success_end: { timeoutSeconds: 3600 },
    },
    children: {
      wf_data_preparation_for_reports: { kind: 'sql', statement: 'select 1' },
      l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'select 1' },
    },
    sap: { viewName: VIEW },
    http: { enabled: false },
    ...(extra.schedule ? { schedule: extra.schedule } : {}),
    logLevel: extra.logLevel ?? 'info',
  };
}

export function benchEnv(uri: string, sapUrl: string): NodeJS.ProcessEnv {
  return {
    L2FLOW_CONN_DWH: uri,
    L2FLOW_CONN_SAP_CONN: sapUrl,
    L2FLOW_CONN_SMTP_DEFAULT: 'smtp://127.0.0.1:1', // only used when a run fails
    EMAIL_RECIPIENTS: 'dwh-team@bank.example',
  };
}

export function benchConfig(uri: string, sapUrl: string, settings: object): Config {
  return loadConfig(benchEnv(uri, sapUrl), { file: settings });
}

/** createApp as `l2flow run` builds it, logging to a file (default /dev/null), started. */
export async function startApp(config: Config, opts: { pool?: pg.Pool; logFile?: string; beforeStart?: (app: App) => void } = {}): Promise<App> {
  const logger = createLogger({
    level: config.logLevel,
    destination: opts.logFile ? createWriteStream(opts.logFile) : pino.destination({ dest: '/dev/null', sync: false }),
  });
  const app = createApp(config, logger, opts.pool ? { pool: opts.pool } : {});
  opts.beforeStart?.(app);
  await app.start();
  return app;
}

/** One sample of an interleaved probe: arm, pause, fire, wait for seen, settle. */
export interface Probe {
  name: string;
  /** Get ready for sample i (parked, idle); returns the action that triggers it and when it is seen. */
  arm(i: number): Promise<{ fire(): Promise<void>; seen: Promise<number>; done?(): Promise<void> }>;
  close(): Promise<void>;
}

/**
 * A probe in a throwaway database of its own (`tag`), dropped by its close(). PostgreSQL signals every listening
 * backend of the INSERT's database, lowest backend id first, and the first one signalled sees the NOTIFY ~0.1–0.16 ms
 * sooner on this 2-core VM (diag-sensor, the raw listener connected before or after the runtime's): in a shared
 * database one probe's trigger would wake the others' listeners and put whichever connected first ahead of the rest.
 */
export async function probeInOwnDb(tag: string, make: (db: BenchDb) => Promise<Probe>): Promise<Probe> {
  const db = await openDb(tag);
  const probe = await make(db).catch(async (err: unknown) => {
    await db.drop();
    throw err;
  });
  return {
    ...probe,
    async close() {
      await probe.close().finally(() => db.drop());
    },
  };
}

/** The floor: a committed flag INSERT → its trigger's NOTIFY at a bare `pg` LISTEN client, in a database of its own. */
export function floorProbe(tag: string, firstBusinessDate: string): Promise<Probe> {
  return probeInOwnDb(`${tag}_floor`, async (db) => flagProbe(db, await rawListener(db.uri, firstBusinessDate), 'floor: raw INSERT → NOTIFY'));
}

/** Any Observer of observers.ts as a probe whose trigger is the flag INSERT of business date first + i. */
export function flagProbe(db: BenchDb, o: Observer, name = o.name): Probe {
  return {
    name,
    async arm(i) {
      const date = addDaysIso(o.firstDate, i);
      const armed = await o.arm(date);
      return { fire: () => db.insertFlag(date), seen: armed.seen, ...(armed.done ? { done: armed.done } : {}) };
    },
    close: () => o.close(),
  };
}

export function addDaysIso(date: string, days: number): string {
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10);
}

/** Pause between arming and firing, the same for every probe: the idle protocol. */
export const SETTLE_MS = 5;
/** Pause after each sample so its tail does not overlap the next one. */
export const QUIET_MS = 10;

/** Round r visits every probe once; the order rotates and flips so machine drift hits all alike. */
function order<T>(items: T[], r: number): T[] {
  const k = items.length;
  const rotated = items.map((_, i) => items[(i + r) % k]!);
  return Math.floor(r / k) % 2 ? rotated.reverse() : rotated;
}

/** Interleaved samples (ms from the trigger being sent to seen) of every probe; the first `warmup` rounds are dropped. */
export async function sampleInterleaved(probes: Probe[], rounds: number, warmup: number): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>(probes.map((p) => [p.name, []]));
  for (let r = 0; r < warmup + rounds; r++) {
    for (const p of order(probes, r)) {
      const armed = await p.arm(r);
      await sleep(SETTLE_MS);
      const sent = performance.now();
      await armed.fire();
      const at = await within(armed.seen, 30_000, `${p.name} sample ${r}`);
      await armed.done?.();
      if (r >= warmup) out.get(p.name)!.push(at - sent);
      await sleep(QUIET_MS);
    }
  }
  return out;
}

export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`benchmark: ${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Poll `cond` every `everyMs` until it holds or `ms` pass. */
export async function until(cond: () => Promise<boolean> | boolean, ms: number, what: string, everyMs = 20): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`benchmark: ${what} did not happen within ${ms} ms`);
    await sleep(everyMs);
  }
}

export interface Stats {
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** p50, p90, p99 and max of `values` (nearest rank), rounded to µs. */
export function percentiles(values: number[]): Stats {
  const s = [...values].sort((a, b) => a - b);
  const at = (p: number) => s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)] ?? Number.NaN;
  return { p50: round3(at(50)), p90: round3(at(90)), p99: round3(at(99)), max: round3(s[s.length - 1] ?? Number.NaN) };
}

/** A stand-in SAP: answers every POST with 200. */
export async function startSap(): Promise<{ url: string; requests: () => number; close(): Promise<void> }> {
  let requests = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      requests += 1;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/sap/readiness`,
    requests: () => requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

