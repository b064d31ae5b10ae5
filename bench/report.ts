/** Percentiles, the plain-text table and the JSON line of the sensor benchmark. */
import v8 from 'node:v8';
import vm from 'node:vm';
import type { Marks } from './observers.js';

export interface Sample {
  /** performance.now() differences in ms: "seen" minus the moment the INSERT was sent / its commit acknowledged. */
  fromSend: number;
  fromAck: number;
  /** Marks relative to the commit ack (ms). */
  marks: Marks;
  /** performance.now() from INSERT sent to seen, and how much of it this process spent in GC pauses. */
  window: [number, number];
  gcMs: number;
}

export interface Stats {
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

export interface Memory {
  rssMiB: number;
  heapUsedMiB: number;
  heapTotalMiB: number;
  externalMiB: number;
}

export interface BenchInfo {
  samples: number;
  warmup: number;
  postgres: string;
  node: string;
  cpus: number;
  cpuModel: string;
  logLevel: string;
  targetMs: number;
  /** Name of the raw observer (the floor) and of the one the target is about. */
  baseline: string;
  subject: string;
  memory: { afterWarmup: Memory; end: Memory };
  runs: { succeeded: number; sapRequests: number } | null;
  durationS: number;
  /** Every GC pause of the process during the bench. */
  gc: { pauses: number; totalMs: number; longestMs: number };
  /** 1-minute load average at the start and the end: other work on the machine shows in the tail. */
  load: { start: number; end: number };
}

const round = (x: number) => Math.round(x * 1000) / 1000;
const signed = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(3)}`;

export function percentiles(values: number[]): Stats {
  const s = [...values].sort((a, b) => a - b);
  const at = (p: number) => s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)] ?? Number.NaN;
  return { p50: round(at(50)), p90: round(at(90)), p99: round(at(99)), max: round(s[s.length - 1] ?? Number.NaN) };
}

/** A full GC first (V8's gc() made reachable at run time), so heap figures compare across points in the run. */
export function memory(): Memory {
  v8.setFlagsFromString('--expose-gc');
  (vm.runInNewContext('gc') as () => void)();
  const m = process.memoryUsage();
  const mib = (b: number) => Math.round((b / 1024 / 1024) * 10) / 10;
  return { rssMiB: mib(m.rss), heapUsedMiB: mib(m.heapUsed), heapTotalMiB: mib(m.heapTotal), externalMiB: mib(m.external) };
}

const KEYS = ['p50', 'p90', 'p99', 'max'] as const;
const minus = (a: Stats, b: Stats): Stats => Object.fromEntries(KEYS.map((k) => [k, round(a[k] - b[k])])) as unknown as Stats;
const MARKS: [keyof Marks, string][] = [
  ['notified', 'NOTIFY reached the hub'],
  ['checkSent', 'confirming check sent'],
  ['checked', 'confirming check answered'],
];

/** Print the table and the JSON line; returns whether the target is met. */
export function report(info: BenchInfo, names: string[], results: Map<string, Sample[]>): boolean {
  const stats = new Map<string, { fromAck: Stats; fromSend: Stats; marks: Record<string, Stats>; gc: { samplesHit: number; maxPauseInWindowMs: number; fromAckWithoutGc: Stats } }>();
  for (const name of names) {
    const r = results.get(name) ?? [];
    const marks: Record<string, Stats> = {};
    for (const [k] of MARKS) {
      const v = r.map((s) => s.marks[k]).filter((x): x is number => x !== undefined);
      if (v.length) marks[k] = percentiles(v);
    }
    // Per sample, what the observer added after its LISTEN connection had the notification.
    const added = r.filter((s) => s.marks.notified !== undefined).map((s) => s.fromAck - s.marks.notified!);
    if (added.length) marks.afterNotify = percentiles(added);
    const hit = r.filter((s) => s.gcMs > 0);
    stats.set(name, {
      fromAck: percentiles(r.map((s) => s.fromAck)),
      fromSend: percentiles(r.map((s) => s.fromSend)),
      marks,
      gc: {
        samplesHit: hit.length,
        maxPauseInWindowMs: round(Math.max(0, ...hit.map((s) => s.gcMs))),
        fromAckWithoutGc: percentiles(r.filter((s) => s.gcMs === 0).map((s) => s.fromAck)),
      },
    });
  }
  const base = stats.get(info.baseline)!;
  const diffs = Object.fromEntries(
    names.filter((n) => n !== info.baseline).map((n) => [n, { fromAck: minus(stats.get(n)!.fromAck, base.fromAck), fromSend: minus(stats.get(n)!.fromSend, base.fromSend) }]),
  );
  const subj = diffs[info.subject]!;
  const met = subj.fromAck.p99 <= info.targetMs && subj.fromSend.p99 <= info.targetMs;

  const W = 46;
  const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(3) : 'n/a').padStart(9);
  const row = (label: string, s: Stats) => `${label.padEnd(W)}${KEYS.map((k) => fmt(s[k])).join('')}`;
  const head = (title: string) => `${title.padEnd(W)}${KEYS.map((k) => k.padStart(9)).join('')}`;
  const out: string[] = [
    `sensor latency: ${info.samples} samples per observer (+${info.warmup} warm-up), interleaved; times in ms`,
    `PostgreSQL ${info.postgres} on 127.0.0.1, Node ${info.node}, ${info.cpus} CPUs (${info.cpuModel}), runtime log level ${info.logLevel}`,
    '',
    head('from commit ack (the INSERT returned)'),
    ...names.map((n) => row(`  ${n}`, stats.get(n)!.fromAck)),
    head('from INSERT sent'),
    ...names.map((n) => row(`  ${n}`, stats.get(n)!.fromSend)),
    head(`difference to ${info.baseline}`),
    ...Object.entries(diffs).flatMap(([n, d]) => [row(`  ${n}, from commit ack`, d.fromAck), row(`  ${n}, from INSERT sent`, d.fromSend)]),
  ];
  for (const n of names) {
    const s = stats.get(n)!;
    if (Object.keys(s.marks).length === 0) continue;
    out.push(head(`where the time goes, ${n}`));
    for (const [k, label] of MARKS) if (s.marks[k]) out.push(row(`  ${label}`, s.marks[k]));
    out.push(row(`  ${n === info.subject ? 'run left wait_for_l2_full_load' : 'sensor resolved'}`, s.fromAck));
    if (s.marks.afterNotify) out.push(row('  per sample: NOTIFY at hub -> seen', s.marks.afterNotify));
    if (s.gc.samplesHit > 0) out.push(row(`  seen, the ${info.samples - s.gc.samplesHit} samples without GC`, s.gc.fromAckWithoutGc));
  }
  out.push(
    '',
    `target: ${info.subject} p99 within ${info.targetMs} ms of ${info.baseline} p99: ` +
      `${signed(subj.fromAck.p99)} ms from commit ack, ${signed(subj.fromSend.p99)} ms from INSERT sent -> ${met ? 'MET' : 'NOT MET'}`,
  );
  out.push(
    `GC: ${info.gc.pauses} pauses in the whole bench, 2 of them the forced full GCs of the memory figures (total ${info.gc.totalMs} ms, longest ${info.gc.longestMs} ms); inside a sample's window: ${names.map((n) => `${n} ${stats.get(n)!.gc.samplesHit}/${info.samples} (longest ${stats.get(n)!.gc.maxPauseInWindowMs} ms)`).join(', ')}`,
  );
  if (info.runs) out.push(`runs: ${info.runs.succeeded} finished success, SAP received ${info.runs.sapRequests} POSTs`);
  const m = info.memory;
  out.push(
    `memory after a full GC (whole bench process: runtime + observers): rss ${m.end.rssMiB} MiB, heap used ${m.end.heapUsedMiB} MiB of ${m.end.heapTotalMiB} MiB, ` +
      `external ${m.end.externalMiB} MiB; after warm-up: rss ${m.afterWarmup.rssMiB} MiB, heap used ${m.afterWarmup.heapUsedMiB} MiB`,
    `wall time ${info.durationS} s; 1-minute load average ${info.load.start} at start, ${info.load.end} at end (${info.cpus} CPUs)`,
  );
  console.log(out.join('\n'));
  console.log(JSON.stringify({ bench: 'sensor-latency', ...info, observers: Object.fromEntries(stats), difference: diffs, targetMet: met }));
  return met;
}
