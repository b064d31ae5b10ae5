import pg from 'pg';
import pgListen, { type Subscriber } from 'pg-listen';
import { Observable, Subject, filter, map, share } from 'rxjs';
import { createRateLimitedWarn } from '../lib/log.js';
import { backoffDelay, type RetryPolicy } from '../lib/retry.js';
import { formatDuration } from '../lib/time.js';
import type { Logger } from '../services/types.js';

const createSubscriber = pgListen.default;

/** Reconnects of the LISTEN connection, forever: the first wait is 125–250 ms, the fifth 2–4 s, from the seventh on 5–10 s. */
const RECONNECT: RetryPolicy = { maxTries: Infinity, baseDelayMs: 250, maxDelayMs: 10_000, jitter: 'equal' };

/** One notification as the hub delivers it: the channel and its JSON-parsed payload. */
export interface HubNotification {
  channel: string;
  payload: unknown;
}

export interface NotificationHubOptions {
  connectionString: string;
  channels: string[];
  logger: Logger;
  /** How often to verify the listener connection with `pg_listening_channels()`. */
  heartbeatMs?: number;
  /** How long the heartbeat query may take before the connection counts as dead. */
  heartbeatTimeoutMs?: number;
  /** Larger payloads are dropped: ours are ~150 bytes, anything near NOTIFY's 8000-byte cap is not ours. */
  maxPayloadBytes?: number;
  /**
   * Whether the heartbeat also requires every channel in `pg_listening_channels()` (default: always). Behind a pooler
   * in transaction mode that query lands on any backend and a reconnect would be forced at nearly every heartbeat:
   * the runtime turns it off while its NOTIFY self-test finds that notifications never arrive anyway.
   */
  checkChannels?: () => boolean;
}

export interface NotificationHub {
  /** Every valid notification on the hub's channels; shared by all subscribers (parsed once). */
  notifications$: Observable<HubNotification>;
  /** Emits after the first connect and after every reconnect, once all LISTENs are in place. */
  connected$: Observable<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
  isConnected(): boolean;
}

/** The process's single LISTEN connection: reconnects forever, verifies itself, hands out parsed notifications. */
export function createNotificationHub(opts: NotificationHubOptions): NotificationHub {
  const log = opts.logger.child({ module: 'notification-hub' });
  const channels = [...new Set(opts.channels)];
  const heartbeatMs = opts.heartbeatMs ?? 30_000;
  const heartbeatTimeoutMs = opts.heartbeatTimeoutMs ?? Math.min(10_000, heartbeatMs);
  const maxPayloadBytes = opts.maxPayloadBytes ?? 4_096;
  const dropWarn = createRateLimitedWarn(log, 60_000);
  const raw$ = new Subject<{ channel: string; payload: unknown }>();
  const connected = new Subject<void>();

  let subscriber: Subscriber | undefined;
  let client: pg.Client | undefined; // the connection pg-listen currently listens on
  let lastBuilt: pg.Client | undefined;
  let listening = false;
  /** Set while pg-listen reconnects: resolves once that reconnect got its connection or gave up (stop() waits for it). */
  let reconnectDone: { promise: Promise<void>; resolve: () => void } | null = null;
  const reconnecting = () => reconnectDone !== null;
  let initialDone = false;
  let started = false;
  let stopped = false;
  let lostAt = 0;
  let heartbeatTimer: NodeJS.Timeout | undefined;
  let heartbeatRunning = false;

  const notifications$ = raw$.pipe(
    map(({ channel, payload }) => parsePayload(channel, payload)),
    filter((n): n is HubNotification => n !== null),
    share(),
  );

  function parsePayload(channel: string, payload: unknown): HubNotification | null {
    if (typeof payload !== 'string') {
      dropWarn(channel, { channel }, `dropped a notification on ${channel} without a payload`);
      return null;
    }
    const bytes = Buffer.byteLength(payload);
    if (bytes > maxPayloadBytes) {
      dropWarn(channel, { channel, bytes }, `dropped an oversized notification on ${channel} (${bytes} > ${maxPayloadBytes} bytes)`);
      return null;
    }
    try {
      return { channel, payload: JSON.parse(payload) as unknown };
    } catch {
      dropWarn(channel, { channel, excerpt: payload.slice(0, 80) }, `dropped a notification on ${channel} that is not JSON`);
      return null;
    }
  }

  function forceReconnect(c: pg.Client, why: string, extra: Record<string, unknown>): void {
    if (c !== client || stopped || reconnecting()) return;
    log.warn(extra, `listener connection unhealthy (${why}); forcing a reconnect`);
    listening = false;
    // Destroying the socket makes pg emit 'error', on which pg-listen reconnects and re-LISTENs.
    c.connection.stream.destroy();
  }

  async function heartbeat(): Promise<void> {
    const c = client;
    if (!c || stopped || reconnecting() || heartbeatRunning) return;
    heartbeatRunning = true;
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${heartbeatTimeoutMs} ms`)), heartbeatTimeoutMs);
      });
      const res = await Promise.race([c.query<{ channel: string }>('select pg_listening_channels() as channel'), timeout]);
      if (opts.checkChannels?.() === false) return; // the answer alone shows the connection is alive
      const have = new Set(res.rows.map((r) => r.channel));
      const missing = channels.filter((ch) => !have.has(ch));
      if (missing.length > 0) forceReconnect(c, 'not listening on every channel', { missing });
    } catch (err) {
      forceReconnect(c, 'heartbeat query failed', { err });
    } finally {
      clearTimeout(timer);
      heartbeatRunning = false;
    }
  }

  function onReconnect(attempt: number): void {
    if (attempt === 1) {
      // pg-listen dropped its listeners from the old client; a late second 'error' from it must not crash us.
      client?.on('error', () => undefined);
      listening = false;
      let resolve!: () => void;
      reconnectDone = { promise: new Promise<void>((r) => (resolve = r)), resolve };
      lostAt = Date.now();
    }
    log.warn({ attempt, downMs: Date.now() - lostAt }, `LISTEN connection lost; reconnect attempt ${attempt}`);
  }

  /** A reconnect that got its connection after stop(): pg-listen's close() ended the client before it, not this one. */
  function closeLate(): void {
    const done = reconnectDone;
    reconnectDone = null;
    void (lastBuilt?.end() ?? Promise.resolve()).catch(() => undefined).finally(() => done?.resolve());
  }

  function reconnected(): void {
    reconnectDone?.resolve();
    reconnectDone = null;
  }

  function onConnected(): void {
    if (!initialDone) return; // the first connect is announced by start(), after our own LISTENs
    if (stopped) return closeLate();
    client = lastBuilt;
    reconnected();
    listening = true;
    log.info({ downMs: Date.now() - lostAt }, `LISTEN connection re-established after ${formatDuration(Date.now() - lostAt)}`);
    connected.next();
  }

  function onError(err: Error): void {
    if (stopped) {
      closeLate();
      return log.debug({ err }, 'listener error after stop');
    }
    // With retryTimeout Infinity this means a reconnect got a connection but a re-LISTEN failed: the
    // heartbeat sees the missing channel and forces another reconnect.
    if (reconnecting()) {
      client = lastBuilt;
      reconnected();
    }
    log.error({ err }, 'listener error; the heartbeat will repair the connection');
  }

  return {
    notifications$,
    connected$: connected.asObservable(),
    isConnected: () => listening && !stopped,

    async start() {
      if (started) throw new Error('notification hub already started');
      started = true;
      subscriber = buildSubscriber(
        { connectionString: opts.connectionString, application_name: 'l2flow-listener', connectionTimeoutMillis: 10_000 },
        {
          retryTimeout: Infinity,
          paranoidChecking: false, // the heartbeat below does better
          parse: (s: string) => s, // parsed by the hub so a bad payload is dropped, not an 'error' event
          // pg-listen passes the number of reconnects that failed so far, starting at 0.
          retryInterval: (failed: number) => {
            if (stopped) throw new Error('notification hub stopped'); // ends pg-listen's retry loop
            return backoffDelay(RECONNECT, failed + 1);
          },
        },
        (c) => {
          c.on('error', () => undefined); // pg-listen attaches its own; this only keeps strays harmless
          lastBuilt = c;
        },
      );
      subscriber.events.on('error', onError);
      subscriber.events.on('reconnect', onReconnect);
      subscriber.events.on('connected', onConnected);
      subscriber.events.on('notification', (n) => raw$.next({ channel: n.channel, payload: n.payload }));
      try {
        await subscriber.connect();
        client = lastBuilt;
        for (const channel of channels) await subscriber.listenTo(channel); // one by one: pg warns on concurrent queries
      } catch (err) {
        stopped = true;
        await subscriber.close().catch(() => undefined);
        throw new Error(`could not LISTEN on ${channels.join(', ')}: ${(err as Error).message}`, { cause: err });
      }
      if (!client) log.warn('pg-listen did not build its client through pg.Client: the heartbeat is disabled');
      initialDone = true;
      listening = true;
      log.info({ channels }, 'listening');
      connected.next();
      heartbeatTimer = setInterval(() => void heartbeat(), heartbeatMs);
      heartbeatTimer.unref();
    },

    async stop() {
      if (stopped && !subscriber) return;
      stopped = true;
      listening = false;
      clearInterval(heartbeatTimer);
      const sub = subscriber;
      subscriber = undefined;
      if (sub) {
        // close() waits for the socket's end, which a half-open socket never sends.
        await atMost(sub.close(), 2_000).catch((err: unknown) => log.warn({ err }, 'closing the listener connection failed'));
        client?.connection.stream.destroy();
        // A reconnect under way gets its connection (closed at once) or gives up: stop() resolves after that, so it
        // leaves no connection behind.
        if (reconnectDone) await atMost(reconnectDone.promise, 2_000);
      }
      raw$.complete();
      connected.complete();
    },
  };
}

/**
 * pg-listen keeps its client private, but the heartbeat must query that very connection. pg-listen reads
 * `pg.Client` once, synchronously, when the subscriber is created, so a subclass installed for that call
 * sees every client it builds (the first and each reconnect's).
 */
function buildSubscriber(
  config: pg.ClientConfig,
  options: Parameters<typeof createSubscriber>[1],
  onClient: (c: pg.Client) => void,
): Subscriber {
  const Original = pg.Client;
  class TappedClient extends Original {
    constructor(c?: string | pg.ClientConfig) {
      super(c);
      serializeListens(this);
      onClient(this);
    }
  }
  (pg as { Client: typeof pg.Client }).Client = TappedClient;
  try {
    return createSubscriber(config, options);
  } finally {
    (pg as { Client: typeof pg.Client }).Client = Original;
  }
}

/**
 * After a reconnect pg-listen re-LISTENs every channel at once; from the third on, pg (8.x) prints a deprecation
 * warning for a query queued behind another. Its LISTENs are sent one by one instead; other queries pass as they are.
 */
function serializeListens(c: pg.Client): void {
  const query = c.query.bind(c) as (...args: unknown[]) => unknown;
  let tail: Promise<unknown> = Promise.resolve();
  (c as { query: unknown }).query = (...args: unknown[]) => {
    const [text] = args;
    if (args.length !== 1 || typeof text !== 'string' || !text.startsWith('LISTEN ')) return query(...args);
    const sent = tail.then(() => query(text));
    tail = sent.catch(() => undefined);
    return sent;
  };
}

/** Wait for `p`, at most `ms`; a rejection of `p` is the caller's. */
async function atMost(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([p, new Promise((r) => (timer = setTimeout(r, ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
