// The run page: what the run did (statechart, timeline), what it waits on, how it failed, and clear / cancel.

import { duration, el, get, post, say, when } from './api.js';

const ACTIVE = ['queued', 'running'];

/** Draw the run of `date` into `view`. */
export async function renderRun(view, date) {
  const [run, svg] = await Promise.all([get(`/api/runs/${date}`), fetch(`/api/runs/${date}/diagram.svg?embed`).then((r) => r.text())]);
  view.replaceChildren(
    el('section', { class: 'run-page', 'data-date': date, 'data-status': run.status },
      el('p', { class: 'crumbs' }, el('a', { href: '/' }, '← all runs')),
      el('h1', {}, `Run ${date} `, el('span', { class: `badge rs-${run.status}`, id: 'run-status' }, run.status)),
      facts(run),
      actions(run, date),
      failure(run),
      waiting(run),
      el('div', { class: 'run-body' },
        el('figure', { class: 'chart', id: 'statechart' }, el('figcaption', {}, 'Statechart (from the machine definition)'), parseSvg(svg)),
        timeline(run))),
  );
}

function facts(run) {
  const row = (k, v) => [el('dt', {}, k), el('dd', {}, v ?? '–')];
  return el('dl', { class: 'facts' },
    row('run id', run.run_id), row('attempt', run.attempt), row('load id', run.load_id), row('current step', run.current_step),
    row('triggered by', run.triggered_by), row('started', when(run.started_at)), row('finished', when(run.finished_at)));
}

/** The server's SVG as a DOM node (parsed, never assigned as HTML); its styles come from /assets/statechart.css. */
function parseSvg(text) {
  const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
  const svg = doc.documentElement;
  if (svg.nodeName !== 'svg') return el('p', { class: 'error' }, 'the statechart could not be drawn');
  return document.importNode(svg, true);
}

/** The run's failure: its error, and each failed try with its own error. */
function failure(run) {
  const failedTries = run.steps.filter((s) => s.status === 'failed' && s.error);
  if (!run.error && failedTries.length === 0) return null;
  return el('section', { class: 'panel failure', id: 'failure' },
    el('h2', {}, 'Failure'),
    run.error ? el('p', { class: 'error-text' }, el('strong', {}, run.error.code), ': ', run.error.message) : null,
    failedTries.length ? el('ul', {}, failedTries.map((s) =>
      el('li', {}, el('code', {}, s.step), ` attempt ${s.attempt}, try ${s.try_number}: `, `${s.error.code ?? ''} ${s.error.message ?? ''}`))) : null,
    run.failureEmail?.length ? el('p', { class: 'muted' }, `failure mail: ${run.failureEmail.map((m) => m.status).join(', ')}`) : null);
}

/** A waiting sensor: its condition, its last check and its deadline. */
function waiting(run) {
  const w = run.waitingOn;
  if (!w) return null;
  const condition = w.step === 'wait_for_l2_full_load'
    ? `flag '${w.flagCode}' in ${w.flagTable} for business date ${w.businessDate}`
    : `the run of ${w.previousLogicalDate} succeeds (now: ${w.previousStatus ?? 'no run'})`;
  const row = (k, v) => [el('dt', {}, k), el('dd', {}, v)];
  return el('section', { class: 'panel waiting', id: 'waiting' },
    el('h2', {}, `Waiting: ${w.step}`),
    el('dl', { class: 'facts' },
      row('condition', condition),
      row('last check', w.lastCheckAt ? `${when(w.lastCheckAt)}${w.lastCheckOk === false ? ' (the check failed)' : ''}` : 'not checked yet'),
      row('next poll by', when(w.nextPollAt)),
      row('deadline', when(run.deadlines?.[w.step]))));
}

/** Every try of every attempt, with a bar placed on the run's own time axis. */
function timeline(run) {
  const now = Date.now();
  const times = run.steps.map((s) => [Date.parse(s.started_at), s.finished_at ? Date.parse(s.finished_at) : now]);
  const t0 = Math.min(...times.map((t) => t[0]));
  const span = Math.max(1, Math.max(...times.map((t) => t[1])) - t0);
  const rows = run.steps.map((s, i) => {
    const [a, b] = times[i];
    const state = s.status === 'running' && s.step.startsWith('wait_for_') ? 'waiting' : s.status;
    const bar = el('span', { class: `bar st-${state}`, title: `${when(s.started_at)} → ${when(s.finished_at)}` });
    // Through the CSSOM: the page's policy refuses style attributes, not styles set from its own script.
    bar.style.left = `${((a - t0) / span) * 100}%`;
    bar.style.width = `${Math.max(0.8, ((b - a) / span) * 100)}%`;
    const track = el('div', { class: 'track' }, bar);
    return el('tr', { 'data-step': s.step, 'data-state': state },
      // The error goes under the step, so a long message wraps across the row instead of squeezing a column.
      el('td', {}, el('code', {}, s.step), s.error ? el('div', { class: 'err' }, `${s.error.code ?? ''} ${s.error.message ?? ''}`) : null),
      el('td', { class: 'num' }, `${s.attempt}.${s.try_number}`),
      el('td', { class: `st st-${state}` }, state),
      el('td', { class: 'num' }, duration(b - a)),
      el('td', { class: 'track-cell' }, track));
  });
  return el('section', { class: 'timeline', id: 'timeline' },
    el('h2', {}, 'Timeline'),
    rows.length === 0 ? el('p', { class: 'muted' }, 'No step has started yet.') :
      el('div', { class: 'scroller' }, el('table', {},
        el('thead', {}, el('tr', {}, ['step', 'attempt.try', 'state', 'duration', 'when'].map((h) => el('th', {}, h)))),
        el('tbody', {}, rows))));
}

/** Clear (a dry run first, then the confirmation) and cancel. */
function actions(run, date) {
  const active = ACTIVE.includes(run.status);
  const plan = el('div', { class: 'plan', id: 'clear-plan', hidden: true });
  const clear = async () => {
    try {
      const dry = await post(`/api/runs/${date}/clear`, { dryRun: true });
      const confirm = el('button', { type: 'button', class: 'danger', id: 'confirm-clear', onclick: async () => {
        try {
          await post(`/api/runs/${date}/clear`, { reason: 'cleared from the dashboard' });
          say(`cleared ${date}: it is queued again`);
          plan.hidden = true;
        } catch (err) { say(err.message, 'error'); }
      } }, 'Confirm clear');
      plan.replaceChildren(
        el('h3', {}, 'Clearing would re-run:'),
        el('ul', {}, dry.cleared.map((c) => el('li', {}, `${c.logicalDate} (${c.runId}, attempt ${c.attempt}): from `, el('code', {}, c.plan.fromStep), ` → ${c.plan.rerun.join(', ')}`))),
        confirm, ' ', el('button', { type: 'button', onclick: () => (plan.hidden = true) }, 'Keep as is'));
      plan.hidden = false;
    } catch (err) {
      say(err.message, 'error');
    }
  };
  const cancel = async () => {
    if (!window.confirm(`Cancel the run of ${date}? Its running step is stopped.`)) return;
    try {
      await post(`/api/runs/${date}/cancel`, { reason: 'cancelled from the dashboard' });
      say(`cancelled ${date}`);
    } catch (err) { say(err.message, 'error'); }
  };
  return el('div', { class: 'actions' },
    el('button', { type: 'button', id: 'clear', disabled: active, title: active ? 'a queued or running run cannot be cleared' : undefined, onclick: clear }, 'Clear…'),
    el('button', { type: 'button', id: 'cancel', class: 'danger', disabled: !active, onclick: cancel }, 'Cancel run'),
    plan);
}
