import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';

/**
 * A throwaway PostgreSQL 15 cluster for tests that stop or restart the server: the machine's shared server on
 * 5432 serves every other test file in parallel and must never go down. Debian's binaries refuse to run as root,
 * so as root they run as the `postgres` OS user on a data directory it owns.
 */

const BIN = process.env.L2FLOW_TEST_PG_BIN ?? '/usr/lib/postgresql/15/bin';
const run = promisify(execFile);

export type StopMode = 'smart' | 'fast' | 'immediate';

export interface PrivatePg {
  /** TCP port on 127.0.0.1 (fixed across stop/start). */
  port: number;
  /** The cluster's data directory (its unix socket lives here too). */
  dataDir: string;
  /** `postgres://postgres@127.0.0.1:<port>/<db>` (trust auth, superuser). */
  uri(db?: string): string;
  /** `pg_ctl stop -m <mode>` (default fast: every backend is terminated, clients see 57P01). */
  stop(mode?: StopMode): Promise<void>;
  start(): Promise<void>;
  /** `pg_ctl restart -m <mode>`. */
  restart(mode?: StopMode): Promise<void>;
  /** Whether the server accepts connections now. */
  isRunning(): Promise<boolean>;
  /** The server's own log (useful when a test fails). */
  serverLog(): string;
  /** Stop at once and delete every file. Safe to call twice. */
  destroy(): Promise<void>;
}

function postgresIds(): { uid: number; gid: number } {
  const id = (flag: string) => spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' });
  const u = id('-u');
  const g = id('-g');
  if (u.status !== 0 || g.status !== 0) throw new Error('running as root needs a `postgres` OS user to own the test cluster (none found)');
  return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** initdb + start a private cluster on a free port; `destroy()` it in afterAll. */
export async function startPrivatePg(opts: { extraConf?: Record<string, string | number> } = {}): Promise<PrivatePg> {
  for (const b of ['initdb', 'pg_ctl']) {
    if (!existsSync(path.join(BIN, b))) throw new Error(`${path.join(BIN, b)} not found: install postgresql-15 (or set L2FLOW_TEST_PG_BIN)`);
  }
  const asRoot = process.getuid?.() === 0;
  // mkdtemp makes a 0700 directory: the postgres user must be able to traverse every parent of its data directory.
  const base = mkdtempSync('/tmp/l2flow-pg-');
  chmodSync(base, 0o755);
  const dataDir = path.join(base, 'data');
  mkdirSync(dataDir, { mode: 0o700 });
  if (asRoot) {
    const { uid, gid } = postgresIds();
    chownSync(dataDir, uid, gid);
  }
  const logFile = path.join(dataDir, 'server.log');

  /** Run a PostgreSQL binary as the cluster's owner. */
  const pg = async (bin: string, args: string[]) => {
    const [cmd, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', path.join(BIN, bin), ...args]] : [path.join(BIN, bin), args];
    try {
      return await run(cmd, argv, { cwd: base, encoding: 'utf8', timeout: 60_000 });
    } catch (err) {
      const e = err as { stderr?: string; stdout?: string; message: string };
      throw new Error(`${bin} ${args.join(' ')} failed: ${e.stderr || e.stdout || e.message}`, { cause: err });
    }
  };

  await pg('initdb', ['-D', dataDir, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync', '--no-instructions']);
  let port = 0;
  const conf = (p: number) =>
    Object.entries({
      listen_addresses: "'127.0.0.1'",
      port: p,
      unix_socket_directories: `'${dataDir}'`,
      fsync: 'off',
      synchronous_commit: 'off',
      full_page_writes: 'off',
      max_connections: 100,
      ...opts.extraConf,
    })
      .map(([k, v]) => `${k} = ${v}\n`)
      .join('');

  const start = async () => {
    await pg('pg_ctl', ['start', '-D', dataDir, '-l', logFile, '-w', '-t', '30']);
  };
  // A free port can be taken between our look and the server's bind: try a few.
  for (let tries = 0; ; tries++) {
    port = await freePort();
    // Later settings win in postgresql.conf, so a retry simply appends a new port.
    appendFileSync(path.join(dataDir, 'postgresql.conf'), `\n# l2flow test cluster\n${conf(port)}`);
    try {
      await start();
      break;
    } catch (err) {
      if (tries >= 2) throw err;
    }
  }

  let destroyed = false;
  // If the test process dies without afterAll, do not leave a server behind.
  const onExit = () => {
    if (destroyed) return;
    const argv = ['stop', '-D', dataDir, '-m', 'immediate', '-w'];
    if (asRoot) spawnSync('runuser', ['-u', 'postgres', '--', path.join(BIN, 'pg_ctl'), ...argv], { cwd: base });
    else spawnSync(path.join(BIN, 'pg_ctl'), argv, { cwd: base });
    rmSync(base, { recursive: true, force: true });
  };
  process.once('exit', onExit);

  const helper: PrivatePg = {
    port,
    dataDir,
    uri: (db = 'postgres') => `postgres://postgres@127.0.0.1:${port}/${db}`,
    async stop(mode = 'fast') {
      await pg('pg_ctl', ['stop', '-D', dataDir, '-m', mode, '-w', '-t', '30']);
    },
    start,
    async restart(mode = 'fast') {
      await pg('pg_ctl', ['restart', '-D', dataDir, '-m', mode, '-l', logFile, '-w', '-t', '30']);
    },
    async isRunning() {
      return new Promise((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      });
    },
    serverLog() {
      try {
        return readFileSync(logFile, 'utf8');
      } catch {
        return '';
      }
    },
    async destroy() {
      if (destroyed) return;
      await pg('pg_ctl', ['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '30']).catch(() => undefined);
      destroyed = true;
      process.off('exit', onExit);
      rmSync(base, { recursive: true, force: true });
    },
  };
  return helper;
}
