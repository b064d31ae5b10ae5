import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { packageRoot } from '../../lib/package-root.js';
import { ConfigError } from '../config.js';
import { envValue } from '../config-env.js';
import { isAlive, postgresUser, traversable } from './embedded.js';

/** Where the demo keeps its data, and its small state file (port, password) and lock. */

/** The package's root: config/demo.yaml and the default .l2flow-demo live there. */
export const PACKAGE_ROOT = packageRoot(import.meta.url);

export const DEMO_CONFIG_FILE = path.join(PACKAGE_ROOT, 'config', 'demo.yaml');
/** The first port tried for the demo PostgreSQL (5432 is often taken by a real one). */
export const DEMO_PG_PORT = 54329;

export interface DemoPaths {
  dir: string;
  pgData: string;
  pgLog: string;
  stateFile: string;
  lockFile: string;
  /** Set when the wanted directory is not reachable by the postgres user (we run as root) and `dir` is a fallback. */
  fellBackFrom: string | null;
}

/** The demo's directory: L2FLOW_DEMO_DIR, else .l2flow-demo in the package; as root, a traversable fallback. */
export function demoPaths(env: NodeJS.ProcessEnv): DemoPaths {
  const wanted = path.resolve(envValue(env, 'L2FLOW_DEMO_DIR') ?? path.join(PACKAGE_ROOT, '.l2flow-demo'));
  const owner = postgresUser();
  let dir = wanted;
  let fellBackFrom: string | null = null;
  if (owner && !traversable(wanted, owner)) {
    // PostgreSQL runs as `postgres` and must reach its data directory through every parent.
    dir = path.join(tmpdir(), `l2flow-demo-${createHash('sha256').update(wanted).digest('hex').slice(0, 10)}`);
    fellBackFrom = wanted;
  }
  return { dir, pgData: path.join(dir, 'pgdata'), pgLog: path.join(dir, 'postgres.log'), stateFile: path.join(dir, 'demo.json'), lockFile: path.join(dir, 'demo.lock'), fellBackFrom };
}

/** The demo's first PostgreSQL port to try: L2FLOW_DEMO_PORT, else 54329. */
export function demoPortStart(env: NodeJS.ProcessEnv): number {
  const text = envValue(env, 'L2FLOW_DEMO_PORT');
  if (text === undefined) return DEMO_PG_PORT;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1024 || n > 65535) {
    throw new ConfigError('L2FLOW_DEMO_PORT', `"${text.slice(0, 20)}" is not a port from 1024 to 65535: write e.g. L2FLOW_DEMO_PORT=${DEMO_PG_PORT}`);
  }
  return n;
}

export interface DemoState {
  /** The port the demo PostgreSQL took last time (tried first next time). */
  port: number;
  /** The demo PostgreSQL's password (generated once; the file is readable by its owner only). */
  password: string;
  /** The dashboard of the running demo, for `l2flow demo <command>`'s messages. */
  httpUrl?: string | null;
}

export function readState(p: DemoPaths): DemoState | null {
  try {
    const s = JSON.parse(readFileSync(p.stateFile, 'utf8')) as Partial<DemoState>;
    return typeof s.port === 'number' && typeof s.password === 'string' ? (s as DemoState) : null;
  } catch {
    return null;
  }
}

export function writeState(p: DemoPaths, s: DemoState): void {
  writeFileSync(p.stateFile, `${JSON.stringify(s, null, 2)}\n`, { mode: 0o600 });
}

export function newPassword(): string {
  return randomBytes(18).toString('base64url');
}

/** The pid of the demo process holding the lock, if it is alive. */
export function lockHolder(p: DemoPaths): number | null {
  let pid: number;
  try {
    pid = Number(readFileSync(p.lockFile, 'utf8').trim());
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return null;
  return isAlive(pid) ? pid : null;
}


/** Take the demo lock (one demo per directory); returns the pid of a live holder instead when there is one. */
export function takeLock(p: DemoPaths): { release(): void } | { heldBy: number } {
  mkdirSync(p.dir, { recursive: true, mode: 0o755 });
  for (let tries = 0; tries < 2; tries++) {
    try {
      const fd = openSync(p.lockFile, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return { release: () => rmSync(p.lockFile, { force: true }) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = lockHolder(p);
      if (holder) return { heldBy: holder };
      // Left by a demo that was killed: take it over.
      rmSync(p.lockFile, { force: true });
    }
  }
  const holder = lockHolder(p);
  return { heldBy: holder ?? -1 };
}
