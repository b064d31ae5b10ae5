import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Hono, type Context } from 'hono';
import { machineGraph } from '../../machines/diagram.js';
import { STATECHART_CSS, toSvg, type StateMark } from '../../machines/diagram-svg.js';
import { STEP_IDS } from '../../machines/steps.js';
import { workflowMachine } from '../../machines/workflow.js';
import { packageRoot } from '../../lib/package-root.js';
import { gridJson, stateLegend, stepStates } from '../status-view.js';
import { dateParam, HttpError, type Send } from './respond.js';
import { listQuery, type RunsApi } from './routes-runs.js';

/**
 * The dashboard: its static page and assets (src/dashboard, shipped in the package as they are), and the three reads
 * only the page needs: the grid (runs with each step's state), the machine graph, and a run's statechart as SVG.
 */

/** src/dashboard in the package (shipped as it is; the compiled and the bundled code read it from there). */
function dashboardDir(): string {
  const dir = path.join(packageRoot(import.meta.url), 'src', 'dashboard') + path.sep;
  if (!existsSync(`${dir}index.html`)) throw new Error(`the dashboard's files are missing: looked in ${dir}`);
  return dir;
}

const TYPES: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
  png: 'image/png',
  svg: 'image/svg+xml; charset=utf-8',
};

/** Nothing but this origin: no inline script or style, no frames, no other host (the bank has no internet anyway). */
const CSP = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'";

const secured = (c: Context) => {
  c.header('content-security-policy', CSP);
  c.header('x-content-type-options', 'nosniff');
  c.header('referrer-policy', 'no-referrer');
};

/** A step state as the statechart marks it; not started and unknown states are not marked. */
const MARK_OF: Record<string, StateMark> = { success: 'done', failed: 'failed', running: 'active', waiting: 'waiting', cancelled: 'cancelled' };

/** The marks of one run: each step by its state, and the final state the run reached. */
function runMarks(status: string, steps: Parameters<typeof stepStates>[0]): Record<string, StateMark> {
  const marks: Record<string, StateMark> = {};
  for (const [step, state] of Object.entries(stepStates(steps))) {
    const mark = MARK_OF[state];
    if (mark) marks[step] = mark;
  }
  if (status === 'success') marks.success = 'done';
  if (status === 'failed') marks.failed = 'failed';
  if (status === 'cancelled') marks.cancelled = 'cancelled';
  return marks;
}

/** The page's routes (`/`, `/runs/:date`, `/assets/*`) and its API reads (`/api/grid`, `/api/machine`, the SVG). */
export function dashboardRoutes(api: RunsApi, send: Send) {
  const dir = dashboardDir();
  const graph = machineGraph(workflowMachine);
  const page = async (c: Context) => {
    secured(c);
    return c.body(await readFile(`${dir}index.html`), 200, { 'content-type': TYPES.html!, 'cache-control': 'no-cache' });
  };
  return new Hono()
    .get('/', page)
    .get('/runs/:date', (c) => (dateParam(c), page(c)))
    .get('/assets/statechart.css', (c) => {
      secured(c);
      return c.body(STATECHART_CSS, 200, { 'content-type': TYPES.css! });
    })
    .get('/assets/:file', async (c) => {
      // Only plain names of files in the folder: no path, so nothing outside it can be asked for.
      const file = c.req.param('file');
      const type = /^[a-z0-9-]+\.([a-z]+)$/.exec(file)?.[1];
      if (!type || !TYPES[type] || !existsSync(`${dir}${file}`)) throw new HttpError(404, 'NOT_FOUND', `no asset ${file.slice(0, 60)}`);
      secured(c);
      return c.body(await readFile(`${dir}${file}`), 200, { 'content-type': TYPES[type]!, 'cache-control': 'no-cache' });
    })
    .get('/api/machine', (c) => send(c, graph))
    .get('/api/grid', async (c) => {
      const q = listQuery(c);
      const runs = await api.listRuns(q);
      const steps = await api.stepsOf(runs);
      return send(c, { steps: STEP_IDS, legend: stateLegend(), runs: runs.map((run) => gridJson({ run, steps: steps.get(run.run_id) ?? [] })) });
    })
    .get('/api/runs/:date/diagram.svg', async (c) => {
      const date = dateParam(c);
      const run = await api.getRun(date);
      if (!run) throw new HttpError(404, 'NOT_FOUND', `no run for ${date}: queue one with POST /api/runs {"date": "${date}"}`);
      // ?embed: no inline <style>, for the page, whose policy refuses inline styles (it links /assets/statechart.css).
      const svg = toSvg(graph, { marks: runMarks(run.status, run.steps), inlineStyle: c.req.query('embed') === undefined });
      secured(c);
      return c.body(svg, 200, { 'content-type': TYPES.svg!, 'cache-control': 'no-cache' });
    });
}
