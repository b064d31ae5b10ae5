import { escapeHtml, type RenderedEmail } from './render.js';

/** A notice about a run that has not failed: late (a deadline passed), recovered (a late run succeeded), blocked. */
export interface NoticeInput {
  kind: 'late' | 'recovered' | 'blocked';
  workflowId: string;
  runId: string;
  logicalDate: string;
  businessDate: string;
  attempt: number;
  /** Where the run is: its status and current step. */
  status: string;
  currentStep: string | null;
  /** late: the deadline as operators configured it, e.g. "07:30 (Asia/Tashkent)", and the step it is for, if any. */
  expectedBy?: string;
  step?: string;
  /** What the run waits on (status's wait description), when it waits in a sensor. */
  waitingOn?: string;
  /** blocked: how long the run has waited behind the failed run. */
  waitedFor?: string;
}

const TITLES = { late: 'LATE', recovered: 'RECOVERED', blocked: 'BLOCKED' } as const;

/** Build a late/recovered/blocked mail: subject, text and HTML naming the workflow, date, where the run is and what it waits on. */
export function renderNotice(n: NoticeInput): RenderedEmail {
  const where = n.status === 'running' && n.currentStep ? `running, in ${n.currentStep}` : n.status;
  const what = n.step ? `step ${n.step}` : 'the run';
  const headline = {
    late: `${what} has not succeeded by ${n.expectedBy ?? 'its expected time'}: it is ${where}`,
    recovered: `the run succeeded after it was reported late`,
    blocked: `the run has waited${n.waitedFor ? ` ${n.waitedFor}` : ''} behind a failed previous run`,
  }[n.kind];
  const subject = `[l2flow] ${TITLES[n.kind]} ${n.workflowId} ${n.logicalDate}: ${headline}`.replace(/\s+/g, ' ').slice(0, 250);
  const facts: Array<[string, string]> = [
    ['Workflow', n.workflowId],
    ['Logical date', `${n.logicalDate} (business date ${n.businessDate})`],
    ['Where the run is', where],
    ...(n.expectedBy ? [[n.step ? `Step ${n.step} expected by` : 'Expected by', n.expectedBy] as [string, string]] : []),
    ...(n.waitingOn ? [['Waiting on', n.waitingOn] as [string, string]] : []),
    ['Run', `${n.runId} (attempt ${n.attempt})`],
  ];
  const next = {
    late: `This is not a failure: the run goes on, and one short mail follows if it succeeds. Follow it with: l2flow status --date ${n.logicalDate}`,
    recovered: 'Nothing to do.',
    blocked: `Fix and re-run the blocking date (see "Waiting on"); this run then goes on by itself. Follow it with: l2flow status --date ${n.logicalDate}`,
  }[n.kind];
  const width = Math.max(...facts.map(([k]) => k.length)) + 2;
  const text = [
    `${n.workflowId} ${n.logicalDate}: ${headline}.`,
    '',
    ...facts.map(([k, v]) => `${`${k}:`.padEnd(width)}${v}`),
    '',
    next,
    '',
    `— l2flow (one ${n.kind} mail per run attempt${n.kind === 'late' ? ' and deadline' : ''})`,
    '',
  ].join('\n');
  const e = escapeHtml;
  const cell = 'style="padding:4px 12px 4px 0;vertical-align:top"';
  const colour = n.kind === 'recovered' ? '#1b7f3b' : '#b26a00';
  const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>${e(subject)}</title></head>
<body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222">
<h2 style="color:${colour};margin:0 0 12px">${e(n.workflowId)} ${e(n.logicalDate)}: ${e(TITLES[n.kind].toLowerCase())}</h2>
<p>${e(headline)}.</p>
<table style="border-collapse:collapse">
${facts.map(([k, v]) => `<tr><th align="left" ${cell}>${e(k)}</th><td ${cell}>${e(v)}</td></tr>`).join('\n')}
</table>
<p>${e(next)}</p>
<p style="color:#666">— l2flow (one ${e(n.kind)} mail per run attempt${n.kind === 'late' ? ' and deadline' : ''})</p>
</body></html>
`;
  return { subject, text, html };
}
