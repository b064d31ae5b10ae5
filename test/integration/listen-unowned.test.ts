import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createL2flow } from '../../src/runtime/api.js';
import type { SensorCheck } from '../../src/runtime/app.js';
import { addDays } from '../../src/lib/dates.js';
import { FLAG, RECIPIENTS, SECRETS, SMTP_USER, useFixture, type Fixture } from '../helpers/app-fixture.js';
import { startPgProxy, type PgProxy } from '../helpers/pg-proxy.js';
import { runMain, until } from '../helpers/process.js';
import { writeChildrenConfig } from '../helpers/children-config.js';

/**
 * When the warehouse is not ours: a flag table without l2flow's trigger (notify: false), a warehouse behind a pooler
 * that accepts LISTEN and never delivers (a proxy that drops NotificationResponse messages stands in for pgbouncer in
 * transaction pooling mode), and a listener URI of its own that goes around it.
 */

type Line = { level: number; msg: string; module?: string } & Record<string, unknown>;

/** The listener's role: not a superuser, with a password of its own that must never show. */
const LISTEN_SECRET = 'L1sten-Pa55-9a7c';

describe('when the warehouse is not ours', () => {
  let fx: Fixture;
  useFixture((f) => (fx = f));
  let listenRole: string;
  let listenUri: string;
  let swallowing: PgProxy;
  const dir = mkdtempSync(path.join(tmpdir(), 'l2flow-listen-'));

  beforeAll(async () => {
    listenRole = `l2flow_ls_${fx.db.name}`;
    await fx.db.pool.query(`create role ${listenRole} login password '${LISTEN_SECRET}'`);
    listenUri = fx.db.uri.replace(/^postgres:\/\/[^@]*@/, `postgres://${listenRole}:${LISTEN_SECRET}@`);
    swallowing = await startPgProxy(fx.dwhUri, { dropNotifications: true });
  });
  afterAll(async () => {
    rmSync(dir, { recursive: true, force: true });
    await swallowing?.close();
    const lines = fx.lines.join('');
    expect(lines.includes(LISTEN_SECRET), 'the listener password appears in a log line').toBe(false);
    // Cluster-wide; its sessions end with the apps (useFixture's reset stops them after each test).
    await fx.db.pool.query(`drop role if exists ${listenRole}`);
  });

  const parsed = (): Line[] => fx.lines.map((l) => JSON.parse(l) as Line);
  const linesSince = (n: number) => parsed().slice(n);
  const checksOf = (app: { sensorChecks$: { subscribe(f: (c: SensorCheck) => void): unknown } }) => {
    const seen: SensorCheck[] = [];
    app.sensorChecks$.subscribe((c) => void seen.push(c));
    return seen;
  };
  const inFlagSensor = (date: string) =>
    until(`the run of ${date} to wait in wait_for_l2_full_load`, async () => (await fx.run(date))?.current_step === 'wait_for_l2_full_load');
  /** The sensor's first check found no flag: a flag inserted now is seen by a hint or a poll, not by that check. */
  const parkedInFlagSensor = (checks: SensorCheck[]) =>
    until('the flag sensor\'s first check', async () =>
      checks.some((c) => c.sensor === 'wait_for_l2_full_load' && c.reason === 'register' && c.satisfied.length === 0));
  const listenerRole = async () =>
    (await fx.db.pool.query<{ usename: string }>(
      `select usename from pg_stat_activity where application_name = 'l2flow-listener' and datname = current_database()`,
    )).rows.map((r) => r.usename);

  it('notify: false — migrate skips the trigger, start() does not ask for it, one warning with the numbers, a run passes the sensor on its poll', async () => {
    await fx.db.pool.query('drop trigger l2flow_dwh_flag_notify on md.dwh_flag');
    try {
      const migrated = await runMain(['migrate'], { L2FLOW_CONN_DWH: fx.dwhUri, L2FLOW_FLAG_NOTIFY: 'false' });
      expect(migrated.err).toBe('');
      expect(migrated.out).toMatch(/^schema up to date; notify trigger on md\.dwh_flag skipped \(sensors\.wait_for_l2_full_load\.notify: false\)/);
      const { rows } = await fx.db.pool.query(`select 1 from pg_trigger where tgname = 'l2flow_dwh_flag_notify'`);
      expect(rows, 'migrate installed the trigger anyway').toEqual([]);

      // The embedding API (what `l2flow run` calls): with notify on it refuses to start without the trigger.
      const D = '2024-06-02';
      const from = fx.lines.length;
      const options = (notify: boolean) => ({
        config: {
          workflow: { startDate: D, claimIntervalSeconds: 0.2 },
          sensors: { wait_for_l2_full_load: { notify, pokeIntervalSeconds: 0.5 } },
          http: { port: 0 },
          connections: { dwh: fx.dwhUri, sap_conn: fx.sapUri, smtp_default: fx.smtp.uri(SMTP_USER, SECRETS.smtp) },
          email: { recipients: RECIPIENTS },
          children: {
            wf_data_preparation_for_reports: { kind: 'sql' as const, statement: 'select $1::date' },
            l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql' as const, statement: 'select $1::date, $2::bigint' },
          },
        },
        logger: { level: 'debug', destination: { write: (s: string) => void fx.lines.push(s) } },
      });
      const strict = createL2flow(options(true));
      await expect(strict.start()).rejects.toMatchObject({ code: 'FLAG_TRIGGER_MISSING', message: expect.stringMatching(/L2FLOW_FLAG_NOTIFY=false/) });
      await strict.stop();

      const l2 = createL2flow(options(false));
      try {
        await l2.start();
        const warnings = linesSince(from).filter((l) => /polling alone/.test(l.msg));
        expect(warnings.map((l) => [l.level, l.msg])).toEqual([[40,
          'flag sensor on polling alone (sensors.wait_for_l2_full_load.notify: false): a flag is seen up to 500 ms after it is inserted, ' +
            '7200 queries per hour while a run waits for it; lower sensors.wait_for_l2_full_load.pokeIntervalSeconds ' +
            '(L2FLOW_FLAG_POKE_INTERVAL_SECONDS) to react sooner',
        ]]);
        // The run-status channel is untouched, and the self-test still passes on it.
        const ready = await until('the NOTIFY self-test', async () => {
          const r = (await (await fetch(`${l2.httpUrl}/readyz`)).json()) as { checks: { listener: { delivery: { state: string } } } };
          return r.checks.listener.delivery.state !== 'pending' && r;
        });
        expect(ready.checks.listener).toMatchObject({ ok: true, delivery: { state: 'delivered', message: null } });
        await l2.trigger(D);
        await inFlagSensor(D);
        await fx.insertFlag(addDays(D, -1));
        expect(await fx.finished(D)).toMatchObject({ status: 'success' });
      } finally {
        await l2.stop();
      }
    } finally {
      await fx.db.pool.query(`create trigger l2flow_dwh_flag_notify after insert or update on md.dwh_flag
        for each row execute function l2flow.notify_dwh_flag()`);
    }
  });

  it('notify: false — the flag channel is not listened to: a NOTIFY on it wakes nothing, the poll finds the flag', async () => {
    const D = '2024-06-04';
    const app = await fx.startApp(D, { file: { sensors: { wait_for_l2_full_load: { notify: false, pokeIntervalSeconds: 1 } } } });
    const checks = checksOf(app);
    await fx.trigger(D);
    await parkedInFlagSensor(checks);
    // The trigger is there (the fixture's warehouse has it): its NOTIFY, and one by hand, reach no listener.
    await fx.insertFlag(addDays(D, -1));
    await fx.db.pool.query(`select pg_notify('l2flow_dwh_flag', json_build_object('flag_cd', $1::text, 'business_date', $2::text)::text)`, [FLAG, addDays(D, -1)]);
    expect(await fx.finished(D)).toMatchObject({ status: 'success' });
    const flagChecks = checks.filter((c) => c.sensor === 'wait_for_l2_full_load');
    expect(flagChecks.map((c) => c.reason)).not.toContain('hint');
    expect(flagChecks.find((c) => c.satisfied.length > 0)?.reason).toBe('poll');
  });

  it('behind a pooler that swallows NOTIFYs: one warning naming L2FLOW_CONN_DWH_LISTEN, runs still complete, re-tested after a reconnect', async () => {
    const D = '2024-06-06';
    const from = fx.lines.length;
    const app = await fx.startApp(D, { env: { L2FLOW_CONN_DWH: swallowing.uri }, app: { notifyCheckTimeoutMs: 500 } });
    const first = await until('the NOTIFY self-test', async () => app.notifyDelivery().state !== 'pending' && app.notifyDelivery());
    expect(first).toMatchObject({ state: 'silent', roundTripMs: null, timeoutMs: 500 });
    expect(swallowing.dropped()).toBeGreaterThanOrEqual(1);
    const shown = swallowing.uri.replace(/:[^:@/]*@/, ':***@');
    const expected =
      `LISTEN on ${shown} did not receive a NOTIFY sent through ${shown} within 500 ms: if the warehouse is behind pgbouncer ` +
      'in transaction pooling mode, set L2FLOW_CONN_DWH_LISTEN to a direct PostgreSQL URI; until then the flag sensor reacts only on ' +
      'its fallback poll (every 1m 0s) and queued runs are claimed on the claim poll (every 2 s)';
    expect(first.message).toBe(expected);
    const silentWarnings = () => linesSince(from).filter((l) => l.level === 40 && /did not receive a NOTIFY/.test(l.msg));
    expect(silentWarnings().map((l) => l.msg)).toEqual([expected]);

    // Everything else works: the run is claimed by the claim poll, its flag seen when the sensor starts.
    await fx.trigger(D, { flag: true });
    expect(await fx.finished(D)).toMatchObject({ status: 'success' });

    // A reconnect tests again (it might reach another server now); the state did not change: no second warning.
    await fx.db.pool.query(`select pg_terminate_backend(pid) from pg_stat_activity
      where application_name = 'l2flow-listener' and datname = current_database() and pid <> pg_backend_pid()`);
    await until('a second self-test after the reconnect', async () => app.notifyDelivery().checkedAt !== first.checkedAt, 15_000);
    expect(app.notifyDelivery().state).toBe('silent');
    expect(silentWarnings()).toHaveLength(1);
  });

  it('a direct listener URI (connections.dwh_listen) beside the pooler: checked to be the same database, NOTIFYs arrive, no warning, no password shown', async () => {
    const D = '2024-06-08';
    const from = fx.lines.length;
    const app = await fx.startApp(D, {
      env: { L2FLOW_CONN_DWH: swallowing.uri, L2FLOW_CONN_DWH_LISTEN: listenUri },
      app: { notifyCheckTimeoutMs: 2_000 },
    });
    const checks = checksOf(app);
    expect(await listenerRole()).toEqual([listenRole]);
    const delivery = await until('the NOTIFY self-test', async () => app.notifyDelivery().state !== 'pending' && app.notifyDelivery());
    expect(delivery).toMatchObject({ state: 'delivered', message: null });
    expect(delivery.roundTripMs).toBeGreaterThanOrEqual(0);
    const since = linesSince(from);
    expect(since.filter((l) => l.level >= 40 && l.module === 'notify-check')).toEqual([]);
    // A role that is no superuser reads pg_control_system() on a stock PostgreSQL: compared by the cluster's identifier.
    expect(since.find((l) => /the listener URI reaches the warehouse's database/.test(l.msg))?.msg).toMatch(/of cluster \d+ at 127\.0\.0\.1:5432: LISTEN on postgres:\/\/l2flow_ls_\w+:\*\*\*@127\.0\.0\.1:5432\/l2flow_t_\w+$/);

    // The flag sensor hears the trigger's NOTIFY on the direct connection (its poll is 60 s away).
    await fx.trigger(D);
    await parkedInFlagSensor(checks);
    await fx.insertFlag(addDays(D, -1));
    expect(await fx.finished(D)).toMatchObject({ status: 'success' });
    expect(checks.find((c) => c.sensor === 'wait_for_l2_full_load' && c.satisfied.length > 0)?.reason).toBe('hint');
    expect(fx.lines.join('').includes(LISTEN_SECRET)).toBe(false);

    // `l2flow config check` shows it masked.
    const r = await runMain(['config', 'check', '--json'], {
      L2FLOW_CONN_DWH: fx.dwhUri, L2FLOW_CONN_DWH_LISTEN: listenUri, L2FLOW_CONN_SAP_CONN: fx.sapUri,
      L2FLOW_CONN_SMTP_DEFAULT: fx.smtp.uri(SMTP_USER, SECRETS.smtp), EMAIL_RECIPIENTS: RECIPIENTS.join(','),
      L2FLOW_CONFIG: writeChildrenConfig(dir),
    });
    expect(r.code, r.err).toBe(0);
    expect((JSON.parse(r.out) as { config: { connections: { dwhListen: string } } }).config.connections.dwhListen).toBe(
      listenUri.replace(LISTEN_SECRET, '***'),
    );
    expect(r.out).not.toContain(LISTEN_SECRET);
  });

  it('a listener role that may not read pg_control_system(): the server address is compared instead, and the log says so', async () => {
    // Function privileges live in each database's catalog: this touches the test database alone.
    await fx.db.pool.query('revoke execute on function pg_control_system() from public');
    try {
      const from = fx.lines.length;
      const app = await fx.startApp('2024-06-12', { env: { L2FLOW_CONN_DWH_LISTEN: listenUri } });
      const line = linesSince(from).find((l) => l.module === 'notify-check' && /listener URI reaches/.test(l.msg));
      expect(line?.msg).toMatch(/^the listener URI reaches the same database l2flow_t_\w+ of cluster \d+ at 127\.0\.0\.1:5432 \(compared by database name and server address; this role may not read pg_control_system\(\)\): LISTEN on postgres:\/\/l2flow_ls_\w+:\*\*\*@/);
      expect(line).toMatchObject({ listener: { systemId: null }, queryPool: { systemId: expect.stringMatching(/^\d+$/) } });
      expect(await until('the NOTIFY self-test', async () => app.notifyDelivery().state !== 'pending' && app.notifyDelivery().state)).toBe('delivered');
    } finally {
      await fx.db.pool.query('grant execute on function pg_control_system() to public');
    }
  });

  it('a listener URI of another database: start-up refused naming L2FLOW_CONN_DWH_LISTEN, nothing left listening', async () => {
    const other = listenUri.replace(/\/[^/]*$/, '/postgres');
    const err = await fx.startApp('2024-06-10', { env: { L2FLOW_CONN_DWH_LISTEN: other } }).then(() => null, (e: unknown) => e as Error);
    expect(err).toMatchObject({ name: 'ConfigError', key: 'L2FLOW_CONN_DWH_LISTEN' });
    expect(err!.message).toMatch(/the listener reaches database postgres of cluster \d+ .*but the warehouse queries reach database l2flow_t_\w+ of cluster/);
    expect(err!.message).toMatch(/Point L2FLOW_CONN_DWH_LISTEN at the same database, directly \(not through pgbouncer\)/);
    expect(err!.message).not.toContain(LISTEN_SECRET);
    const { rows } = await fx.db.pool.query(`select datname, application_name from pg_stat_activity where usename = $1`, [listenRole]);
    expect(rows).toEqual([]);
  });
});
