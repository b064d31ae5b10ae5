import type { RunFailure } from '../types.js';

export interface FailureEmailInput {
  workflowId: string;
  runId: string;
  logicalDate: string;
  /** Shown when known; the run processes logicalDate - 1. */
  businessDate?: string;
  loadId: number | null;
  attempt: number;
  failure: RunFailure;
}

export interface RenderedEmail { subject: string; text: string; html: string }

const HINTS: Array<[RegExp, string]> = [
  [/^SENSOR_TIMEOUT$/, 'A sensor gave up waiting. Check that the upstream L1→L2 load set its flag in md.dwh_flag for the business date, and that the previous day\'s run ended successfully.'],
  [/^PREVIOUS_RUN_FAILED$/, 'The previous day\'s run failed and wait_for_success_end is set to fail at once (whenFailed: fail). Fix and re-run that day first.'],
  [/^CHILD_/, 'A child workflow failed, timed out or is not configured. Look at the child workflow\'s own run and log first.'],
  [/^SAP_/, 'The readiness flag was not accepted by SAP. Check the SAP endpoint and its answer; SAP may already have the flag if it timed out.'],
  [/^(DB_ERROR|POOL_TIMEOUT)$/, 'The warehouse refused a query or was not reachable in time. Check the warehouse and its sessions.'],
];

/** Escape text for HTML element content and attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);
}

/** Build the operator mail for a failed run: subject, plain text and HTML, naming the workflow, date, step, error and load id. */
export function renderFailureEmail(input: FailureEmailInput): RenderedEmail {
  const { workflowId, runId, logicalDate, attempt, failure } = input;
  const loadId = input.loadId === null ? 'not assigned' : String(input.loadId);
  const flat = failure.message.replace(/\s+/g, ' ').trim(); // a header is one line; the bodies keep the full text
  const short = flat.length > 100 ? `${flat.slice(0, 99)}…` : flat;
  const subject = `[l2flow] FAILED ${workflowId} ${logicalDate}: ${failure.step} — ${failure.code}: ${short} (load id ${loadId})`;
  const hint = HINTS.find(([re]) => re.test(failure.code))?.[1] ?? 'Read the error above and the run\'s step history to find the cause.';
  const statusCmd = `l2flow status --date ${logicalDate}`;
  const facts: Array<[string, string]> = [
    ['Workflow', workflowId],
    ['Logical date', input.businessDate ? `${logicalDate} (business date ${input.businessDate})` : logicalDate],
    ['Failed step', failure.step],
    ['Error code', failure.code],
    ['Error message', failure.message],
    ['Load id', loadId],
    ['Run', `${runId} (attempt ${attempt})`],
  ];
  const steps = [
    `See the run's steps, errors and this mail's delivery: ${statusCmd}`,
    hint,
    `When the cause is fixed, clear the run to start attempt ${attempt + 1}; steps that already succeeded are not repeated.`,
  ];

  const width = Math.max(...facts.map(([k]) => k.length)) + 2;
  const text = [
    `The ${workflowId} run for ${logicalDate} failed at step ${failure.step}.`,
    '',
    ...facts.map(([k, v]) => `${`${k}:`.padEnd(width)}${v}`),
    '',
    'What to do next:',
    ...steps.map((s, i) => `  ${i + 1}. ${s}`),
    '',
    '— l2flow (this mail is sent once per failed run attempt)',
    '',
  ].join('\n');

  const e = escapeHtml;
  const cell = 'style="padding:4px 12px 4px 0;vertical-align:top"';
  const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>${e(subject)}</title></head>
<body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222">
<h2 style="color:#b00020;margin:0 0 12px">${e(workflowId)} failed for ${e(logicalDate)}</h2>
<p>The run failed at step <b>${e(failure.step)}</b>.</p>
<table style="border-collapse:collapse">
${facts.map(([k, v]) => `<tr><th align="left" ${cell}>${e(k)}</th><td ${cell}>${k === 'Error message' ? `<pre style="margin:0;white-space:pre-wrap">${e(v)}</pre>` : e(v)}</td></tr>`).join('\n')}
</table>
<h3>What to do next</h3>
<ol>
<li>See the run's steps, errors and this mail's delivery: <code>${e(statusCmd)}</code></li>
${steps.slice(1).map((s) => `<li>${e(s)}</li>`).join('\n')}
</ol>
<p style="color:#666">— l2flow (this mail is sent once per failed run attempt)</p>
</body></html>
`;
  return { subject, text, html };
}
