import { Hono, type Context } from 'hono';
import { z } from 'zod';
import type { L2flow } from '../api.js';
import type { RunRow, RunStatus } from '../run-store.js';
import type { ApiToken } from '../config.js';
import { requireToken, type AuthEnv } from './auth.js';
import { badInput, dateParam, HttpError, isoDate, jsonBody, reason, type Send } from './respond.js';

/** The runs API: list, one run, trigger, clear, cancel, mark. Reads are open; writes pass requireToken. */

export type RunsApi = Pick<L2flow, 'trigger' | 'cancel' | 'clear' | 'mark' | 'getRun' | 'listRuns' | 'stepsOf'>;

const STATUSES: RunStatus[] = ['queued', 'running', 'success', 'failed', 'cancelled'];
const MAX_LIMIT = 500;
const LIST_PARAMS = ['from', 'to', 'status', 'limit', 'offset'];

/** A run as the API shows it: the XState snapshot is internal and large, so it stays out. */
const shown = ({ snapshot: _snapshot, ...run }: RunRow) => run;

const triggerBody = z.strictObject({ date: isoDate.optional(), reason: reason.optional() });
const clearBody = z.strictObject({
  to: isoDate.optional(),
  fromStep: z.string({ error: 'must be a step id, e.g. send_flg_to_sap' }).optional(),
  dryRun: z.boolean({ error: 'must be true or false' }).optional(),
  reason: reason.optional(),
});
const cancelBody = z.strictObject({ reason: reason.optional() });
const markBody = z.strictObject({ status: z.enum(['success', 'failed'], { error: 'must be "success" or "failed"' }), reason: reason.optional() });

/** The run's deadlines from its snapshot (absolute, so they survive a restore): the run's and each sensor's, ISO. */
function deadlinesOf(snapshot: unknown): Record<string, string> {
  const ctx = (snapshot as { context?: { runDeadline?: unknown; deadlines?: Record<string, unknown> } } | null)?.context;
  const out: Record<string, string> = {};
  if (typeof ctx?.runDeadline === 'number') out.run = new Date(ctx.runDeadline).toISOString();
  for (const [step, at] of Object.entries(ctx?.deadlines ?? {})) if (typeof at === 'number') out[step] = new Date(at).toISOString();
  return out;
}

/** A whole number query parameter within bounds. */
function whole(name: string, text: string | undefined, dflt: number, min: number, max: number): number {
  if (text === undefined) return dflt;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max) throw badInput(name, `"${text.slice(0, 20)}" must be a whole number from ${min} to ${max}`);
  return n;
}

/** The list's query: every parameter checked, an unknown one refused (a typo must not widen the answer silently). */
export function listQuery(c: Context) {
  const q = c.req.query();
  const unknown = Object.keys(q).find((k) => !LIST_PARAMS.includes(k));
  if (unknown) throw badInput(unknown, `is not a parameter of this list: use ${LIST_PARAMS.join(', ')}`);
  const date = (name: 'from' | 'to') => {
    const v = q[name];
    if (v !== undefined && !isoDate.safeParse(v).success) throw badInput(name, `"${v.slice(0, 40)}" is not a date: write YYYY-MM-DD, e.g. 2024-03-15`);
    return v;
  };
  const [from, to] = [date('from'), date('to')];
  if (from && to && to < from) throw badInput('to', `${to} is before from ${from}`);
  const status = q.status?.split(',').map((s) => s.trim()).filter(Boolean);
  const wrong = status?.find((s) => !STATUSES.includes(s as RunStatus));
  if (wrong !== undefined) throw badInput('status', `"${wrong.slice(0, 20)}" is not a run status: use ${STATUSES.join(', ')} (comma separated)`);
  return { from, to, status: status as RunStatus[] | undefined, limit: whole('limit', q.limit, 50, 1, MAX_LIMIT), offset: whole('offset', q.offset, 0, 0, 1_000_000) };
}

/** The routes under /api/runs. */
export function runsRoutes(api: RunsApi, token: ApiToken | null, send: Send) {
  const write = requireToken(token);
  return new Hono<AuthEnv>()
    .get('/', async (c) => {
      const q = listQuery(c);
      // One more than asked: whether a next page exists, without counting every row.
      const rows = await api.listRuns({ ...q, limit: q.limit + 1 });
      return send(c, { runs: rows.slice(0, q.limit).map(shown), limit: q.limit, offset: q.offset, hasMore: rows.length > q.limit });
    })
    .get('/:date', async (c) => {
      const date = dateParam(c);
      const run = await api.getRun(date);
      if (!run) throw new HttpError(404, 'NOT_FOUND', `no run for ${date}: queue one with POST /api/runs {"date": "${date}"}`);
      const { snapshot, ...details } = run;
      return send(c, { ...details, deadlines: deadlinesOf(snapshot) });
    })
    .post('/', write, async (c) => {
      const body = await jsonBody(c, triggerBody);
      const { run, created } = await api.trigger(body.date, { actor: c.get('actor'), reason: body.reason });
      return send(c, { run: shown(run), created }, created ? 201 : 200);
    })
    .post('/:date/clear', write, async (c) => {
      const date = dateParam(c);
      const body = await jsonBody(c, clearBody);
      if (body.to !== undefined && body.to < date) throw badInput('to', `${body.to} is before the path's date ${date}`);
      const cleared = await api.clear({ from: date, to: body.to, fromStep: body.fromStep, dryRun: body.dryRun, actor: c.get('actor'), reason: body.reason });
      return send(c, { dryRun: body.dryRun ?? false, cleared });
    })
    .post('/:date/cancel', write, async (c) => {
      const date = dateParam(c);
      const body = await jsonBody(c, cancelBody);
      const r = await api.cancel(date, { actor: c.get('actor'), reason: body.reason });
      if (!r) throw new HttpError(404, 'NOT_FOUND', `no run for ${date}: nothing to cancel`);
      if (!r.cancelled) throw new HttpError(409, 'NOT_ACTIVE', `the run for ${date} (${r.run.run_id}) is already ${r.run.status}: nothing to cancel`);
      return send(c, { runId: r.run.run_id, was: r.run.status, cancelled: true });
    })
    .post('/:date/mark', write, async (c) => {
      const date = dateParam(c);
      const body = await jsonBody(c, markBody);
      return send(c, await api.mark(date, body.status, { actor: c.get('actor'), reason: body.reason }));
    });
}
