import net from 'node:net';

/**
 * A TCP proxy in front of PostgreSQL on 127.0.0.1. `freeze()` makes every open connection silent (a half-open
 * socket). With `dropNotifications`, it reads the server's messages (1-byte type, 4-byte length; no SSL: node-pg
 * asks for none unless told) and drops every NotificationResponse ('A'): LISTEN is accepted and nothing is ever
 * delivered, as behind pgbouncer in transaction pooling mode.
 */
export interface PgProxy {
  /** `target` with the proxy's port: same user, password and database. */
  uri: string;
  /** Notifications dropped so far. */
  dropped(): number;
  /** Client connections accepted so far, and open now. */
  accepted(): number;
  open(): number;
  freeze(): void;
  close(): Promise<void>;
}

const NOTIFICATION_RESPONSE = 0x41; // 'A'

/** Forward the server's messages, without NotificationResponses; counts what it drops. */
function notificationFilter(write: (b: Buffer) => void, onDrop: () => void): (chunk: Buffer) => void {
  let pending: Buffer = Buffer.alloc(0);
  return (chunk) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    const keep: Buffer[] = [];
    let at = 0;
    while (pending.length - at >= 5) {
      const end = at + 1 + pending.readUInt32BE(at + 1);
      if (end > pending.length) break;
      if (pending[at] === NOTIFICATION_RESPONSE) onDrop();
      else keep.push(pending.subarray(at, end));
      at = end;
    }
    pending = pending.subarray(at);
    if (keep.length) write(Buffer.concat(keep));
  };
}

export async function startPgProxy(target: string, opts: { dropNotifications?: boolean } = {}): Promise<PgProxy> {
  const to = new URL(target);
  const pairs = new Set<{ frozen: boolean; down: net.Socket; up: net.Socket }>();
  let dropped = 0;
  let accepted = 0;
  const server = net.createServer((down) => {
    accepted += 1;
    const up = net.connect(Number(to.port || 5432), to.hostname);
    const pair = { frozen: false, down, up };
    pairs.add(pair);
    const toClient = (d: Buffer) => void (pair.frozen || down.write(d));
    const fromServer = opts.dropNotifications ? notificationFilter(toClient, () => dropped++) : toClient;
    down.on('data', (d: Buffer) => void (pair.frozen || up.write(d)));
    up.on('data', fromServer);
    const close = () => {
      down.destroy();
      up.destroy();
      pairs.delete(pair);
    };
    for (const s of [down, up]) s.on('close', close).on('error', close);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const uri = new URL(target);
  uri.port = String((server.address() as net.AddressInfo).port);
  return {
    uri: uri.toString(),
    dropped: () => dropped,
    accepted: () => accepted,
    open: () => pairs.size,
    freeze: () => pairs.forEach((p) => (p.frozen = true)),
    close: async () => {
      pairs.forEach((p) => (p.down.destroy(), p.up.destroy()));
      await new Promise((r) => server.close(r));
    },
  };
}
