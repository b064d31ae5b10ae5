import { styleText } from 'node:util';
import { STEP_IDS, type StepId } from '../machines/steps.js';
import type { RunRow, StepRow } from './run-store.js';

/**
 * `l2flow status` as Airflow's grid: logical dates down, steps across, one symbol per step state. Pure rendering:
 * the command (cli-status.ts) reads the rows, this turns them into lines and JSON.
 */

/** A step's state in the grid; a running sensor step is `waiting`. Unknown row statuses pass through as they are. */
export type StepState = 'success' | 'failed' | 'running' | 'waiting' | 'not_started' | 'cancelled' | (string & {});

/** The sensor steps: while they run, they wait for something outside the run. */
export const SENSOR_STEPS: ReadonlySet<string> = new Set<StepId>(['wait_for_l2_full_load', 'wait_for_success_end']);

const SYMBOLS: Record<string, { symbol: string; label: string; color?: Parameters<typeof styleText>[0] }> = {
  success: { symbol: '✓', label: 'success', color: 'green' },
  failed: { symbol: '✗', label: 'failed', color: 'red' },
  running: { symbol: '▶', label: 'running', color: 'cyan' },
  waiting: { symbol: '…', label: 'waiting (sensor)', color: 'yellow' },
  not_started: { symbol: '·', label: 'not started' },
  cancelled: { symbol: '⊘', label: 'cancelled', color: 'magenta' },
};

/** Every state with its symbol and label, for the dashboard's grid and legend (the same symbols as the CLI). */
export function stateLegend(): { state: string; symbol: string; label: string }[] {
  return Object.entries(SYMBOLS).map(([state, s]) => ({ state, symbol: s.symbol, label: s.label }));
}

/** The grid symbol of a state (`?` for a status this version does not know). */
export function symbolOf(state: StepState, color = false): string {
  const s = SYMBOLS[state];
  if (!s) return '?';
  return color && s.color ? styleText(s.color, s.symbol) : s.symbol;
}

/** The state of a step row: a running sensor is waiting. */
export function stateOf(row: Pick<StepRow, 'step' | 'status'>): StepState {
  return row.status === 'running' && SENSOR_STEPS.has(row.step) ? 'waiting' : row.status;
}

/**
 * The state of every step of a run, by step id. Rows come in start order, so when a step has several rows (one per
 * try) the latest wins; steps without a row are `not_started`. Step ids this version does not know are kept too.
 */
export function stepStates(steps: readonly StepRow[]): Record<string, StepState> {
  const states: Record<string, StepState> = Object.fromEntries(STEP_IDS.map((id) => [id, 'not_started']));
  for (const row of steps) states[row.step] = stateOf(row);
  return states;
}

/** One grid row: the run and its steps. */
export interface GridRun {
  run: RunRow;
  steps: readonly StepRow[];
}

/** `status --json`: each run's fields plus `steps` mapping step id → state. */
export function gridJson({ run, steps }: GridRun) {
  return { ...runJson(run), steps: stepStates(steps) };
}

/** The run fields `status --json` and `status --date D --json` share. */
export function runJson(r: RunRow) {
  return {
    logical_date: r.logical_date,
    business_date: r.business_date,
    run_id: r.run_id,
    status: r.status,
    attempt: r.attempt,
    load_id: r.load_id === null ? null : Number(r.load_id),
    current_step: r.current_step,
    triggered_by: r.triggered_by,
    started_at: r.started_at,
    finished_at: r.finished_at,
    error: r.error,
  };
}

/** The grid's lines: a header of step numbers, one line per run, then the legend (step numbers and symbols). */
export function gridLines(runs: readonly GridRun[], o: { color?: boolean; width?: number } = {}): string[] {
  const numbers = STEP_IDS.map((_, i) => String(i + 1));
  const fixed = (r: RunRow) => [r.logical_date, r.status, r.load_id ?? '-'];
  const head = ['logical_date', 'status', 'load_id'];
  const widths = head.map((h, i) => Math.max(h.length, ...runs.map(({ run }) => fixed(run)[i]!.length)));
  const left = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  // Pad before colouring: escape codes have a length but no width.
  const stepCells = (states: Record<string, StepState>) =>
    STEP_IDS.map((id, i) => symbolOf(states[id]!, o.color) + ' '.repeat(numbers[i]!.length)).join(' ');
  const lines = [`${left(head)}  ${numbers.join('  ')}  error`];
  for (const { run, steps } of runs) {
    const error = run.error ? `${run.error.code}: ${run.error.message}` : '';
    lines.push(`${left(fixed(run))}  ${stepCells(stepStates(steps))} ${error}`.trimEnd());
  }
  lines.push('', ...legend(o.width ?? 100, o.color));
  return lines;
}

/** Step numbers to step ids and symbols to states, wrapped at `width`. */
function legend(width: number, color = false): string[] {
  const wrap = (prefix: string, items: string[], visible: (s: string) => number = (s) => s.length) => {
    const out: string[] = [];
    let line = prefix;
    let len = prefix.length;
    for (const item of items) {
      if (len > prefix.length && len + 2 + visible(item) > width) {
        out.push(line);
        line = ' '.repeat(prefix.length);
        len = prefix.length;
      }
      line += (len > prefix.length ? '  ' : '') + item;
      len += (len > prefix.length ? 2 : 0) + visible(item);
    }
    return [...out, line];
  };
  const steps = STEP_IDS.map((id, i) => `${i + 1} ${id}`);
  const symbols = Object.entries(SYMBOLS).map(([state, s]) => `${symbolOf(state, color)} ${s.label}`);
  return [...wrap('steps:   ', steps), ...wrap('symbols: ', symbols, (s) => s.replace(/\x1b\[[0-9;]*m/g, '').length)];
}
