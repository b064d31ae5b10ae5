import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { filter, firstValueFrom, timeout } from 'rxjs';
import { createNotificationHub, type HubNotification, type NotificationHub } from '../../src/runtime/notification-hub.js';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { startPgProxy } from '../helpers/pg-proxy.js';
import { until } from '../helpers/process.js';

type LogLine = { level: number; msg: string } & Record<string, unknown>;
const CHANNELS = ['l2flow_dwh_flag', 'l2flow_run'];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function captureLogger() {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { logger, lines };
}

describe('notification hub', () => {
  let db: TestDb;
  let hub: NotificationHub | undefined;
  const terminateListener = () =>
    db.pool.query(`select pg_terminate_backend(pid) from pg_stat_activity
      where application_name = 'l2flow-listener' and datname = current_database() and pid <> pg_backend_pid()`);
  const listeners = async () =>
    (await db.pool.query<{ n: number }>(`select count(*)::int as n from pg_stat_activity
      where application_name = 'l2flow-listener' and datname = current_database()`)).rows[0]?.n;
  const nextOn = (h: NotificationHub, channel: string) =>
    firstValueFrom(h.notifications$.pipe(filter((n) => n.channel === channel), timeout(3_000)));

  beforeAll(async () => {
    db = await createTestDb();
  });
  afterEach(async () => {
    await hub?.stop();
    hub = undefined;
  });
  afterAll(async () => {
    await db?.drop();
  });

  it('delivers parsed payloads of every channel to every subscriber, connected$ after start', async () => {
    const { logger } = captureLogger();
    hub = createNotificationHub({ connectionString: db.uri, channels: CHANNELS, logger });
    const connected = firstValueFrom(hub.connected$);
    await hub.start();
    await connected;
    expect(hub.isConnected()).toBe(true);

    const a = nextOn(hub, 'l2flow_dwh_flag');
    const b = nextOn(hub, 'l2flow_dwh_flag');
    const run = nextOn(hub, 'l2flow_run');
    await db.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ('x', '2024-03-01')`);
    await db.pool.query(`insert into l2flow.run (run_id, workflow_id, logical_date, business_date) values ('r1', 'wf', '2024-03-02', '2024-03-01')`);
    const expected: HubNotification = { channel: 'l2flow_dwh_flag', payload: { flag_cd: 'x', business_date: '2024-03-01' } };
    expect(await a).toEqual(expected);
    expect(await b).toEqual(expected);
    expect((await run).payload).toMatchObject({ run_id: 'r1', logical_date: '2024-03-02', status: 'queued' });
  });

  it('drops non-JSON and oversized payloads with at most one warning per channel per minute', async () => {
    const { logger, lines } = captureLogger();
    hub = createNotificationHub({ connectionString: db.uri, channels: CHANNELS, logger });
    await hub.start();
    const seen: HubNotification[] = [];
    const sub = hub.notifications$.subscribe((n) => seen.push(n));
    const valid = nextOn(hub, 'l2flow_run');
    for (let i = 0; i < 20; i++) await db.pool.query(`select pg_notify('l2flow_dwh_flag', 'not json')`);
    for (let i = 0; i < 5; i++) await db.pool.query(`select pg_notify('l2flow_dwh_flag', repeat('x', 7000))`);
    await db.pool.query(`select pg_notify('l2flow_dwh_flag', json_build_object('pad', repeat('x', 7000))::text)`);
    for (let i = 0; i < 5; i++) await db.pool.query(`select pg_notify('l2flow_run', '{broken')`);
    await db.pool.query(`select pg_notify('l2flow_run', '{"ok":true}')`);
    expect((await valid).payload).toEqual({ ok: true });
    sub.unsubscribe();
    expect(seen).toEqual([{ channel: 'l2flow_run', payload: { ok: true } }]);
    const drops = lines.filter((l) => l.level === 40 && /dropped/.test(l.msg));
    expect(drops.map((l) => l.channel).sort()).toEqual(['l2flow_dwh_flag', 'l2flow_run']);
  });

  it('reconnects after pg_terminate_backend, logs once per attempt and announces it on connected$', async () => {
    const { logger, lines } = captureLogger();
    hub = createNotificationHub({ connectionString: db.uri, channels: CHANNELS, logger });
    await hub.start();
    const reconnected = firstValueFrom(hub.connected$.pipe(timeout(5_000)));
    await terminateListener();
    await reconnected;
    expect(hub.isConnected()).toBe(true);
    const attempts = lines.filter((l) => /reconnect attempt/.test(l.msg));
    expect(attempts.length).toBeGreaterThanOrEqual(1);
    expect(attempts.length).toBeLessThanOrEqual(3);
    const next = nextOn(hub, 'l2flow_run');
    await db.pool.query(`select pg_notify('l2flow_run', '{"after":"reconnect"}')`);
    expect((await next).payload).toEqual({ after: 'reconnect' });
  });

  it('re-LISTENs four channels after a reconnect one by one: every channel delivers again, pg prints no deprecation warning', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => void warnings.push(`${w.name}: ${w.message}`);
    process.on('warning', onWarning);
    try {
      const { logger } = captureLogger();
      const channels = [...CHANNELS, 'l2flow_extra_a', 'l2flow_extra_b'];
      hub = createNotificationHub({ connectionString: db.uri, channels, logger });
      await hub.start();
      const reconnected = firstValueFrom(hub.connected$.pipe(timeout(5_000)));
      await terminateListener();
      await reconnected;
      for (const channel of channels) {
        const next = nextOn(hub, channel);
        await db.pool.query('select pg_notify($1, $2)', [channel, JSON.stringify({ channel })]);
        expect((await next).payload).toEqual({ channel });
      }
      await sleep(50); // process warnings are emitted on the next tick
      expect(warnings.filter((w) => /already executing a query/.test(w))).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('checkChannels false (a pooler that never delivers): the heartbeat asks only whether the connection answers, no reconnect loop', async () => {
    // PostgreSQL truncates identifiers to 63 bytes: pg_listening_channels() never shows this channel as it was given,
    // as a backend reached through pgbouncer in transaction mode shows none of the listener's channels.
    const channels = ['l2flow_run', `l2flow_${'x'.repeat(70)}`];
    const forced = (lines: LogLine[]) => lines.filter((l) => /not listening on every channel/.test(l.msg)).length;
    const strict = captureLogger();
    hub = createNotificationHub({ connectionString: db.uri, channels, logger: strict.logger, heartbeatMs: 100, checkChannels: () => true });
    await hub.start();
    await until('the heartbeat to force a reconnect', async () => forced(strict.lines) > 0);
    await hub.stop();

    const lenient = captureLogger();
    hub = createNotificationHub({ connectionString: db.uri, channels, logger: lenient.logger, heartbeatMs: 100, checkChannels: () => false });
    await hub.start();
    await sleep(1_000); // ten heartbeats
    expect(forced(lenient.lines)).toBe(0);
    expect(hub.isConnected()).toBe(true);
  });

  it('heartbeat forces a reconnect when the connection goes half-open', async () => {
    const proxy = await startPgProxy(db.uri);
    try {
      const { logger, lines } = captureLogger();
      hub = createNotificationHub({ connectionString: proxy.uri, channels: CHANNELS, logger, heartbeatMs: 150, heartbeatTimeoutMs: 150 });
      await hub.start();
      const reconnected = firstValueFrom(hub.connected$.pipe(timeout(5_000)));
      proxy.freeze();
      await reconnected;
      expect(lines.some((l) => /heartbeat query failed/.test(l.msg))).toBe(true);
      const next = nextOn(hub, 'l2flow_run');
      await db.pool.query(`select pg_notify('l2flow_run', '{"after":"half-open"}')`);
      expect((await next).payload).toEqual({ after: 'half-open' });
    } finally {
      await hub?.stop();
      await proxy.close();
    }
  });

  it('stop() during a reconnect resolves once the connection being built is closed: none is left, none comes later', async () => {
    // Through a proxy that counts the connections it is asked for.
    const proxy = await startPgProxy(db.uri);
    try {
      let stopping: Promise<void> | undefined;
      let h: NotificationHub | undefined;
      // pino writes to this destination synchronously: stop() runs inside the first reconnect attempt's callback,
      // before pg-listen builds that attempt's connection.
      const logger = pino({ level: 'debug' }, { write: (s: string) => void (/reconnect attempt 1"/.test(s) && (stopping ??= h!.stop())) });
      h = hub = createNotificationHub({ connectionString: proxy.uri, channels: CHANNELS, logger });
      await h.start();
      expect(proxy.accepted()).toBe(1);
      await terminateListener();
      await until('stop() to be called during the reconnect', async () => stopping !== undefined);
      await stopping;
      const accepted = proxy.accepted();
      expect(accepted).toBe(2); // the reconnect's connection: built, then closed before stop() resolved
      expect(proxy.open()).toBe(0);
      await sleep(300);
      expect(proxy.accepted()).toBe(accepted); // nothing connects after stop() resolved
      expect(proxy.open()).toBe(0);
      await until('no listener connection left on the server', async () => (await listeners()) === 0, 5_000);
    } finally {
      await proxy.close();
    }
  });

  it('stop() closes the listener connection and completes its streams', async () => {
    const { logger } = captureLogger();
    hub = createNotificationHub({ connectionString: db.uri, channels: CHANNELS, logger });
    await hub.start();
    let completed = false;
    hub.notifications$.subscribe({ complete: () => (completed = true) });
    const count = listeners;
    // Seen while connected: without it, a count of 0 after stop() would also hold for a connection never found.
    expect(await count()).toBe(1);
    await hub.stop();
    expect(hub.isConnected()).toBe(false);
    expect(completed).toBe(true);
    const until = Date.now() + 2_000;
    while ((await count()) !== 0 && Date.now() < until) await sleep(20);
    expect(await count()).toBe(0);
  });

  it('start() fails with a clear message when PostgreSQL is unreachable', async () => {
    const { logger } = captureLogger();
    const bad = new URL(db.uri);
    bad.port = '1'; // nothing listens on port 1
    hub = createNotificationHub({ connectionString: bad.toString(), channels: CHANNELS, logger });
    await expect(hub.start()).rejects.toThrow(/could not LISTEN on l2flow_dwh_flag, l2flow_run/);
  });
});
