/** The suite's table: plain text for the terminal, markdown for BENCHMARKS.md. */
import type { Figure } from './harness.js';
import type { SuiteResult } from './index.js';

const fmt = (f: Figure) => (Number.isFinite(f.value) ? `${f.value} ${f.unit}` : String(f.value));
const verdict = (f: Figure) => (f.met === undefined ? 'report' : f.met ? 'met' : '**missed**');
const floorOf = (f: Figure) => (f.floor === undefined ? '' : `${f.floor} ms (×${f.ratio})`);

interface Row {
  bench: string;
  figure: string;
  value: string;
  target: string;
  verdict: string;
  floor: string;
}

function rows(r: SuiteResult): Row[] {
  const out: Row[] = [];
  for (const b of r.benchmarks) {
    if (b.measuredAt) out.push({ bench: b.name, figure: `(kept from ${b.measuredAt})`, value: '', target: '', verdict: '', floor: '' });
    if (b.error) out.push({ bench: b.name, figure: 'error', value: b.error.slice(0, 120), target: '', verdict: 'failed', floor: '' });
    for (const f of b.figures) {
      out.push({ bench: b.name, figure: f.name, value: fmt(f), target: f.target ?? '', verdict: verdict(f), floor: floorOf(f) });
    }
  }
  return out;
}

function header(r: SuiteResult): string {
  const m = r.machine;
  return (
    `${r.startedAt}${r.smoke ? ' (SMOKE: tiny samples, not a measurement)' : ''}; ${m.cpus}× ${m.cpuModel}, ${m.memGiB} GiB; ` +
    `Node ${r.versions.node}, PostgreSQL ${r.versions.postgres}, l2flow ${r.versions.l2flow}, graphile-worker ${r.versions.graphileWorker}; ` +
    `load average ${m.loadavg.start.join(' / ')} at start, ${m.loadavg.end.join(' / ')} at end; ${r.durationS} s`
  );
}

export function textTable(r: SuiteResult): string {
  const all = rows(r);
  const cols: (keyof Row)[] = ['bench', 'figure', 'value', 'target', 'verdict', 'floor'];
  const width = (c: keyof Row) => Math.max(c.length, ...all.map((x) => x[c].replace(/\*/g, '').length));
  const line = (x: Record<keyof Row, string>) => cols.map((c) => x[c].replace(/\*/g, '').padEnd(width(c))).join('  ');
  return [header(r), line({ bench: 'bench', figure: 'figure', value: 'value', target: 'target', verdict: 'verdict', floor: 'floor (ratio)' }), ...all.map(line)].join('\n');
}

export function markdownTable(r: SuiteResult): string {
  const notes = r.benchmarks.flatMap((b) => b.notes.map((n) => `- \`${b.name}\`: ${n}`));
  return [
    `**Latest \`npm run bench\`**: ${header(r)}. Every figure is in \`bench/results/latest.json\`.`,
    '',
    '| benchmark | figure | value | target | verdict | floor, same run (ratio) |',
    '| --- | --- | ---: | --- | --- | ---: |',
    ...rows(r).map((x) => `| ${x.bench} | ${x.figure} | ${x.value} | ${x.target} | ${x.verdict} | ${x.floor} |`),
    '',
    ...notes,
  ].join('\n');
}
