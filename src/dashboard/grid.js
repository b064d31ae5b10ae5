// The landing page: Airflow's grid. Logical dates down, steps across, a colour and a symbol per state.
// The states and symbols come from the server (/api/grid), so the page and `l2flow status` never disagree.

import { el, get } from './api.js';

const LIMIT = 30;
let legend = new Map();
let steps = [];

/** Draw the grid of the newest runs into `view`. */
export async function renderGrid(view) {
  const grid = await get(`/api/grid?limit=${LIMIT}`);
  steps = grid.steps;
  legend = new Map(grid.legend.map((l) => [l.state, l]));
  const body = el('tbody', {}, grid.runs.map(row));
  const table = el('table', { class: 'grid', id: 'grid' }, el('thead', {}, head()), body);
  view.replaceChildren(
    el('section', { class: 'grid-page' },
      el('h1', {}, 'Runs'),
      grid.runs.length ? null : el('p', { class: 'muted', id: 'empty' }, 'No runs yet: trigger one above.'),
      // The scroller keeps a wide grid inside the screen on a phone: it scrolls sideways, the page does not.
      el('div', { class: 'scroller' }, table),
      legendLine()),
  );
}

function head() {
  return el('tr', {},
    el('th', { class: 'date' }, 'logical date'),
    el('th', {}, 'run'),
    steps.map((id, i) => el('th', { class: 'step', title: id, 'data-step': id }, el('span', {}, `${i + 1} ${id}`))));
}

/** One run's row: the date links to its run page. */
function row(run) {
  const cells = steps.map((id) => {
    const state = run.steps[id] ?? 'not_started';
    const l = legend.get(state);
    return el('td', { class: `st st-${state}`, 'data-step': id, 'data-state': state, title: `${id}: ${l?.label ?? state}` }, l?.symbol ?? '?');
  });
  const error = run.error ? `${run.error.code}: ${run.error.message}` : undefined;
  return el('tr', { 'data-date': run.logical_date, 'data-status': run.status },
    el('th', { class: 'date', scope: 'row' }, el('a', { href: `/runs/${run.logical_date}` }, run.logical_date)),
    el('td', { class: `run-status rs-${run.status}`, title: error }, run.status),
    cells);
}

function legendLine() {
  return el('p', { class: 'legend' }, [...legend.values()].map((l) => el('span', { class: `st st-${l.state}` }, `${l.symbol} ${l.label}`)));
}

/** Re-read one date's row after a run event and put it in its place (newest first); a new date gets a new row. */
export async function refreshRow(date) {
  const tbody = document.querySelector('#grid tbody');
  if (!tbody) return;
  const grid = await get(`/api/grid?from=${date}&to=${date}&limit=1`);
  const run = grid.runs[0];
  const old = tbody.querySelector(`tr[data-date="${date}"]`);
  if (!run) return old?.remove();
  const fresh = row(run);
  if (old) return old.replaceWith(fresh);
  const after = [...tbody.rows].find((r) => r.dataset.date < date);
  tbody.insertBefore(fresh, after ?? null);
  document.getElementById('empty')?.remove();
}
