// The dashboard's entry: picks the page from the path (/ or /runs/:date), the Trigger form, and the live event
// stream. No framework and no build step: the server ships these files as they are.

import { post, say, today } from './api.js';
import { refreshRow, renderGrid } from './grid.js';
import { renderRun } from './run.js';

const view = document.getElementById('view');
const runDate = /^\/runs\/(\d{4}-\d{2}-\d{2})$/.exec(location.pathname)?.[1];

async function render() {
  try {
    if (runDate) await renderRun(view, runDate);
    else await renderGrid(view);
  } catch (err) {
    say(err.message, 'error');
  }
}

// Trigger: POST /api/runs, then show the new run's row (the grid) or go to its page.
const form = document.getElementById('trigger');
form.date.value = today();
form.addEventListener('submit', async (e) => {
  e.preventDefault();
  try {
    const { run, created } = await post('/api/runs', { date: form.date.value, reason: 'triggered from the dashboard' });
    say(created ? `queued ${run.run_id}` : `${run.logical_date} already has a run (${run.status})`);
    if (runDate) location.assign(`/runs/${run.logical_date}`);
    else await refreshRow(run.logical_date);
  } catch (err) {
    say(err.message, 'error');
  }
});

// Live updates. Events come in bursts (one per transition): re-read each date at most every 200 ms.
const pending = new Set();
let timer;
function changed(date) {
  if (runDate && date !== runDate) return;
  pending.add(date);
  timer ??= setTimeout(async () => {
    timer = undefined;
    const dates = [...pending];
    pending.clear();
    try {
      if (runDate) await renderRun(view, runDate);
      else for (const d of dates) await refreshRow(d);
    } catch (err) {
      say(err.message, 'error');
    }
  }, 200);
}

const live = document.getElementById('live');
const events = new EventSource('/api/events');
let dropped = false;
events.addEventListener('open', () => {
  live.textContent = '● live';
  live.className = 'live on';
  // Events sent while the stream was down are not replayed: read the page again.
  if (dropped) void render();
  dropped = false;
});
events.addEventListener('error', () => {
  live.textContent = '○ reconnecting…';
  live.className = 'live off';
  dropped = true;
});
events.addEventListener('run', (e) => {
  const event = JSON.parse(e.data);
  changed(event.logicalDate);
});

void render();
