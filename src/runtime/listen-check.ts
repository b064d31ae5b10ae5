import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { filter, type Observable, type Subscription } from 'rxjs';
import { displayUri } from '../lib/connection.js';
import { toErrorInfo } from '../lib/errors.js';
import { abortableSleep, formatDuration } from '../lib/time.js';
import type { Logger } from '../services/types.js';
import { ConfigError } from './config-file.js';
import { LISTEN_CONNECTION_ID, type Config } from './config.js';

/**
 * Two start-up checks of the LISTEN connection when the warehouse is not ours. pgbouncer in transaction or statement
 * pooling mode accepts LISTEN and never delivers a NOTIFY: the delivery check sends one through the query pool (as a
 * flag insert's trigger would be seen) and waits for it on the listener. A separate listener URI must reach the same
 * database as the query pool, or it would never see the warehouse's NOTIFYs: checked before the hub connects.
 */

/** Whether a NOTIFY sent through the query pool reaches the LISTEN connection. */
export interface NotifyDelivery {
  /**
   * `pending`: not tested yet; `delivered`: it arrived; `silent`: it did not arrive within `timeoutMs` (a pgbouncer in
   * transaction pooling mode between l2flow and the listener?); `unknown`: the NOTIFY could not be sent.
   */
  state: 'pending' | 'delivered' | 'silent' | 'unknown';
  /** When the last test ended (ISO), or null. */
  checkedAt: string | null;
  /** From sending the NOTIFY to its arrival on the listener, when delivered. */
  roundTripMs: number | null;
  timeoutMs: number;
  /** What it costs and what to do, when silent or unknown. */
  message: string | null;
}

export interface DeliveryCheck {
  status(): NotifyDelivery;
  /** Test once after the hub's first connect and again after every reconnect (subscribe before the hub starts). */
  start(): void;
  stop(): void;
}

/** A channel only this process listens on: other replicas never see its tests. */
export function deliveryCheckChannel(): string {
  return `l2flow_selftest_${randomBytes(6).toString('hex')}`;
}

/**
 * The delivery check of one hub. Re-tested after every reconnect: a reconnect may reach another server or another
 * pooler (a DNS change, a failover). A warning is logged when the state becomes silent (or unknown), not again while
 * it stays so; an info line when it recovers.
 */
export function createDeliveryCheck(d: {
  channel: string;
  notifications$: Observable<{ channel: string; payload: unknown }>;
  connected$: Observable<void>;
  /** Send `payload` on `channel` the way a sensor's query goes: through the query pool. */
  send: (channel: string, payload: string) => Promise<unknown>;
  timeoutMs: number;
  logger: Logger;
  /** The warning when the NOTIFY did not arrive within `timeoutMs`: what it costs and what to set. */
  silentMessage: string;
}): DeliveryCheck {
  const log = d.logger.child({ module: 'notify-check' });
  let status: NotifyDelivery = { state: 'pending', checkedAt: null, roundTripMs: null, timeoutMs: d.timeoutMs, message: null };
  let running = false;
  let again = false;
  let sub: Subscription | undefined;
  const stopped = new AbortController();

  async function test(): Promise<Omit<NotifyDelivery, 'checkedAt' | 'timeoutMs'>> {
    const token = randomBytes(8).toString('hex');
    let arrivedAt: number | null = null;
    let arrived: () => void = () => undefined;
    const arrival = new Promise<void>((r) => (arrived = r));
    const seen = d.notifications$
      .pipe(filter((n) => n.channel === d.channel && (n.payload as { token?: unknown } | null)?.token === token))
      .subscribe(() => {
        arrivedAt = performance.now();
        arrived();
      });
    try {
      const sentAt = performance.now();
      try {
        await d.send(d.channel, JSON.stringify({ token }));
      } catch (err) {
        const message = `could not send the NOTIFY self-test through the query pool (${toErrorInfo(err).message}); it runs again after the listener's next reconnect`;
        return { state: 'unknown', roundTripMs: null, message };
      }
      // The timeout counts from the commit: a busy pool's wait for a connection is not the listener's fault.
      const wait = new AbortController();
      const onStop = () => wait.abort();
      stopped.signal.addEventListener('abort', onStop, { once: true });
      await Promise.race([arrival.then(() => wait.abort()), abortableSleep(d.timeoutMs, wait.signal)]);
      stopped.signal.removeEventListener('abort', onStop);
      if (arrivedAt === null) return { state: 'silent', roundTripMs: null, message: d.silentMessage };
      return { state: 'delivered', roundTripMs: Math.round((arrivedAt - sentAt) * 100) / 100, message: null };
    } finally {
      seen.unsubscribe();
    }
  }

  async function run(): Promise<void> {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        const before = status.state;
        const result = await test();
        if (stopped.signal.aborted) return;
        status = { ...result, checkedAt: new Date().toISOString(), timeoutMs: d.timeoutMs };
        if (result.state === 'delivered') {
          log.debug({ roundTripMs: result.roundTripMs }, `NOTIFY self-test: sent through the query pool, received on the listener after ${result.roundTripMs} ms`);
          if (before === 'silent') log.info({ roundTripMs: result.roundTripMs }, 'the listener receives NOTIFYs again');
        } else if (result.state !== before) {
          log.warn({ notifyDelivery: result.state, timeoutMs: d.timeoutMs }, result.message!);
        }
      } while (again && !stopped.signal.aborted);
    } finally {
      running = false;
    }
  }

  return {
    status: () => status,
    start() {
      sub ??= d.connected$.subscribe(() => void run());
    },
    stop() {
      stopped.abort();
      sub?.unsubscribe();
    },
  };
}

interface ServerIdentity {
  database: string;
  addr: string | null;
  port: number | null;
  /** pg_control_system().system_identifier; null when the role may not read it. */
  systemId: string | null;
}

async function identify(client: pg.ClientBase): Promise<ServerIdentity> {
  const { rows } = await client.query<{ database: string; addr: string | null; port: number | null }>(
    'select current_database() as database, host(inet_server_addr()) as addr, inet_server_port() as port',
  );
  // Executable by every role on a stock PostgreSQL; a hardened server may revoke it.
  const systemId = await client
    .query<{ id: string }>('select system_identifier::text as id from pg_control_system()')
    .then((r) => r.rows[0]?.id ?? null, () => null);
  return { ...rows[0]!, systemId };
}

const describeServer = (s: ServerIdentity) =>
  `database ${s.database}${s.systemId ? ` of cluster ${s.systemId}` : ''}${s.addr ? ` at ${s.addr}:${s.port}` : ''}`;

/**
 * Before the hub connects to a listener URI of its own: refuse (ConfigError naming `variable`) when it reaches
 * another database than the query pool; when that cannot be told for sure, log what was compared.
 */
export async function checkSameDatabase(d: { pool: pg.Pool; listenUri: string; variable: string; logger: Logger }): Promise<void> {
  const listen = new pg.Client({ connectionString: d.listenUri, application_name: 'l2flow-listener-check', connectionTimeoutMillis: 10_000 });
  let there: ServerIdentity;
  const client = await d.pool.connect();
  try {
    const here = await identify(client);
    try {
      await listen.connect();
      there = await identify(listen);
    } catch (err) {
      throw new ConfigError(d.variable, `could not connect to ${displayUri(d.listenUri)} to LISTEN there: ${toErrorInfo(err).message}`);
    }
    const compared = { queryPool: here, listener: there };
    const bothIds = here.systemId !== null && there.systemId !== null;
    if (here.database !== there.database || (bothIds && here.systemId !== there.systemId)) {
      throw new ConfigError(
        d.variable,
        `the listener reaches ${describeServer(there)}, but the warehouse queries reach ${describeServer(here)}: ` +
          `a NOTIFY never crosses databases, so the sensors would never hear one. Point ${d.variable} at the same database, directly (not through pgbouncer)`,
      );
    }
    const log = d.logger.child({ module: 'notify-check' });
    const shown = displayUri(d.listenUri);
    if (bothIds) log.info(compared, `the listener URI reaches the warehouse's ${describeServer(here)}: LISTEN on ${shown}`);
    else if (here.addr !== null && here.addr === there.addr && here.port === there.port) {
      log.info(compared, `the listener URI reaches the same ${describeServer(here)} (compared by database name and server address; this role may not read pg_control_system()): LISTEN on ${shown}`);
    } else {
      log.info(compared, `the listener URI reaches a database named ${here.database} too; whether it is the same server could not be verified (this role may not read pg_control_system(), and the server addresses differ or are unknown): LISTEN on ${shown}`);
    }
  } finally {
    client.release();
    await listen.end().catch(() => undefined);
  }
}

/** The variable that sets the listener's own URI, as messages name it. */
export const LISTEN_VARIABLE = `L2FLOW_CONN_${LISTEN_CONNECTION_ID.toUpperCase()}`;

/** The start-up warning of notify: false, with what polling alone costs. */
export function pollingAloneMessage(config: Config): string {
  const poke = config.flagSensor.pokeIntervalMs;
  const perHour = Math.round(3_600_000 / poke);
  return `flag sensor on polling alone (sensors.wait_for_l2_full_load.notify: false): a flag is seen up to ${formatDuration(poke)} ` +
    `after it is inserted, ${perHour} queries per hour while a run waits for it; lower sensors.wait_for_l2_full_load.pokeIntervalSeconds ` +
    '(L2FLOW_FLAG_POKE_INTERVAL_SECONDS) to react sooner';
}

/** The warning when the NOTIFY self-test never arrives: where it was sent and heard, what to set, what it costs meanwhile. */
export function silentListenerMessage(config: Config, timeoutMs: number): string {
  const { dwh, dwhListen } = config.connections;
  const fix = dwhListen
    ? `${LISTEN_VARIABLE} must be a direct PostgreSQL URI of the same database (not through pgbouncer)`
    : `if the warehouse is behind pgbouncer in transaction pooling mode, set ${LISTEN_VARIABLE} to a direct PostgreSQL URI`;
  const meanwhile = [
    ...(config.flagSensor.notify ? [`the flag sensor reacts only on its fallback poll (every ${formatDuration(config.flagSensor.pokeIntervalMs)})`] : []),
    `queued runs are claimed on the claim poll (every ${formatDuration(config.claimIntervalMs)})`,
  ];
  return `LISTEN on ${displayUri(dwhListen ?? dwh)} did not receive a NOTIFY sent through ${displayUri(dwh)} within ` +
    `${formatDuration(timeoutMs)}: ${fix}; until then ${meanwhile.join(' and ')}`;
}
