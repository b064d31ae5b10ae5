/**
 * Load-independent counts for the benchmarks: every statement any pg client of this process sends (the runtime's
 * pool, its lock connection, the child connections, the listener; the bench's own clients are left out by their
 * application_name), grouped by what it is. Installed by patching `pg.Client.prototype.query` once, in the bench
 * process only: the product is not changed by it. `snapshot()` and `diff()` count what happened between two moments.
 */
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import type { Probe } from './harness.js';

export interface QueryCounts {
  /** Every statement sent (a round trip to PostgreSQL each; LISTEN/NOTIFY deliveries are not statements). */
  roundTrips: number;
  /** BEGIN … COMMIT/ROLLBACK blocks opened. */
  transactions: number;
  /** Pool checkouts (`pool.connect()`, implicit in `pool.query`). */
  checkouts: number;
  /** saveProgress: the run row + step rows statement (one per snapshot write). */
  snapshotWrites: number;
  /** Statements on the lock connection (run locks, slots, pool slots, leadership). */
  lockStatements: number;
  /** Statements of the fallback/confirming sensor checks and the check log. */
  sensorStatements: number;
  /** NOTIFYs delivered to the runtime's listener (l2flow_run and the flag channel): one per run change or flag committed. */
  notifies: number;
  /** By a short label of the statement (its first words), for the report. */
  byKind: Record<string, number>;
  /** By the connection's application_name. */
  byConnection: Record<string, number>;
}

/** When set, every counted statement is also noted with its start and end (performance.now()). */
export const trace: { on: boolean; items: { kind: string; app: string; start: number; end: number }[] } = { on: false, items: [] };

const zero = (): QueryCounts => ({ roundTrips: 0, transactions: 0, checkouts: 0, snapshotWrites: 0, notifies: 0, lockStatements: 0, sensorStatements: 0, byKind: {}, byConnection: {} });
const counts = zero();
let installed = false;

/** The bench's own connections: not counted. */
const BENCH_APP = /^l2flow-bench/;

function textOf(q: unknown): string {
  if (typeof q === 'string') return q;
  if (q && typeof q === 'object') {
    const o = q as { text?: unknown; name?: unknown };
    if (typeof o.text === 'string') return o.text;
    if (typeof o.name === 'string') return o.name;
  }
  return '?';
}

/** Labels already worked out, by statement text: the counting runs in the runtime's own process and thread. */
const KINDS = new Map<string, string>();

/**
 * A short, stable label: what a statement is when its text says so (the lock statements, saveProgress, the sensors'),
 * else named statements by name (without the hash of their text), others by their first words.
 */
function kindOf(q: unknown, text: string): string {
  let kind = KINDS.get(text);
  if (kind === undefined) {
    const name = q && typeof q === 'object' ? (q as { name?: unknown }).name : undefined;
    kind = knownLabel(text) ?? (typeof name === 'string' ? name.replace(/_[0-9a-f]{10}$/, '') : text.replace(/\s+/g, ' ').trim().toLowerCase().slice(0, 60));
    if (KINDS.size < 10_000) KINDS.set(text, kind);
  }
  return kind;
}

function knownLabel(text: string): string | undefined {
  const t = text.replace(/\s+/g, ' ').trim().toLowerCase();
  if (t.startsWith('with run as ( update l2flow.run')) return 'saveProgress';
  if (t.includes('pg_try_advisory_lock') && t.includes('generate_series')) return 'lock: max_active_runs slot';
  if (t.includes('pg_try_advisory_lock')) return 'lock: try';
  if (t.includes('pg_advisory_unlock')) return 'lock: unlock';
  if (t.startsWith('select to_char(bussines_date')) return 'sensor: flag check';
  if (t.startsWith('begin; select l2flow.assert_unrecorded(')) return 'child: begin + guard';
  if (t.includes('unnest($2::date[]) as k(d) left join l2flow.run')) return 'sensor: previous run check';
  if (t.includes('l2flow.sensor_check')) return 'sensor: check log';
  return undefined;
}

/** Patch pg once; counting starts now. */
export function installCounters(): void {
  if (installed) return;
  installed = true;
  const proto = pg.Client.prototype as unknown as { query: (...a: unknown[]) => unknown };
  const original = proto.query;
  proto.query = function (this: pg.Client & { connectionParameters?: { application_name?: string } }, ...args: unknown[]) {
    const app = this.connectionParameters?.application_name ?? '?';
    if (!BENCH_APP.test(app)) {
      const text = textOf(args[0]);
      const kind = kindOf(args[0], text);
      counts.roundTrips += 1;
      counts.byKind[kind] = (counts.byKind[kind] ?? 0) + 1;
      counts.byConnection[app] = (counts.byConnection[app] ?? 0) + 1;
      if (/^\s*begin\b/i.test(text)) counts.transactions += 1;
      if (kind === 'saveProgress') counts.snapshotWrites += 1;
      if (app === 'l2flow-locks') counts.lockStatements += 1;
      if (kind.startsWith('sensor:')) counts.sensorStatements += 1;
      if (trace.on) {
        const item = { kind, app, start: performance.now(), end: 0 };
        trace.items.push(item);
        const cb = args[args.length - 1];
        if (typeof cb === 'function') {
          args[args.length - 1] = (...r: unknown[]) => {
            item.end = performance.now();
            return (cb as (...x: unknown[]) => unknown)(...r);
          };
        }
        const r = original.apply(this, args);
        if (r && typeof (r as Promise<unknown>).then === 'function') {
          (r as Promise<unknown>).then(() => (item.end = performance.now()), () => (item.end = performance.now()));
        }
        return r;
      }
    }
    return original.apply(this, args);
  };
  const emit = pg.Client.prototype.emit;
  pg.Client.prototype.emit = function (this: pg.Client & { connectionParameters?: { application_name?: string } }, event: string | symbol, ...args: unknown[]) {
    if (event === 'notification' && !BENCH_APP.test(this.connectionParameters?.application_name ?? '')) counts.notifies += 1;
    return emit.call(this, event, ...args);
  };
  const poolProto = pg.Pool.prototype as unknown as { connect: (...a: unknown[]) => unknown };
  const connect = poolProto.connect;
  poolProto.connect = function (this: pg.Pool & { options?: { application_name?: string } }, ...args: unknown[]) {
    if (!BENCH_APP.test(this.options?.application_name ?? '')) counts.checkouts += 1;
    return connect.apply(this, args);
  };
}

export function snapshot(): QueryCounts {
  return { ...counts, byKind: { ...counts.byKind }, byConnection: { ...counts.byConnection } };
}

/** What happened between two snapshots. */
export function diff(a: QueryCounts, b: QueryCounts): QueryCounts {
  const sub = (x: Record<string, number>, y: Record<string, number>) =>
    Object.fromEntries(Object.entries(y).map(([k, v]) => [k, v - (x[k] ?? 0)]).filter(([, v]) => (v as number) > 0));
  return {
    roundTrips: b.roundTrips - a.roundTrips,
    transactions: b.transactions - a.transactions,
    checkouts: b.checkouts - a.checkouts,
    snapshotWrites: b.snapshotWrites - a.snapshotWrites,
    notifies: b.notifies - a.notifies,
    lockStatements: b.lockStatements - a.lockStatements,
    sensorStatements: b.sensorStatements - a.sensorStatements,
    byKind: sub(a.byKind, b.byKind),
    byConnection: sub(a.byConnection, b.byConnection),
  };
}

/** Sum of several diffs divided by their number. */
export function perRun(ds: QueryCounts[]): QueryCounts & { runs: number } {
  const n = Math.max(1, ds.length);
  const avg = (f: (d: QueryCounts) => number) => Math.round((ds.reduce((s, d) => s + f(d), 0) / n) * 100) / 100;
  const keys = (f: (d: QueryCounts) => Record<string, number>) => {
    const out: Record<string, number> = {};
    for (const d of ds) for (const [k, v] of Object.entries(f(d))) out[k] = (out[k] ?? 0) + (v ?? 0);
    return Object.fromEntries(Object.entries(out).map(([k, v]): [string, number] => [k, Math.round((v / n) * 100) / 100]).sort((x, y) => (y[1] ?? 0) - (x[1] ?? 0)));
  };
  return {
    runs: ds.length,
    roundTrips: avg((d) => d.roundTrips),
    transactions: avg((d) => d.transactions),
    checkouts: avg((d) => d.checkouts),
    snapshotWrites: avg((d) => d.snapshotWrites),
    notifies: avg((d) => d.notifies),
    lockStatements: avg((d) => d.lockStatements),
    sensorStatements: avg((d) => d.sensorStatements),
    byKind: keys((d) => d.byKind),
    byConnection: keys((d) => d.byConnection),
  };
}

/** The probe, its counts taken from arming a sample (queueing its run) to the sample being done (its success). */
export function countedProbe<P extends Probe>(p: P, onRun: (c: QueryCounts) => void): P {
  return {
    ...p,
    async arm(i: number) {
      const before = snapshot();
      const armed = await p.arm(i);
      return {
        ...armed,
        async done() {
          await armed.done?.();
          onRun(diff(before, snapshot()));
        },
      };
    },
  };
}
