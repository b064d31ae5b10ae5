import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { main } from '../../src/runtime/cli.js';
import { existsSync, statSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Added under every l2flow a test starts (the env given wins): `l2flow run` serves HTTP on 8780 by default, and test
 * files run in parallel processes, so each server takes any free port instead.
 */
export const TEST_HTTP_ENV: Readonly<Record<string, string>> = { L2FLOW_HTTP_PORT: '0' };

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin/l2flow.js');
/** What bin/l2flow.js runs: the bundle, written last by `npm run build` (after tsc), so it is never older than dist/src. */
const CLI_JS = path.join(ROOT, 'dist/cli.cjs');

function newestSource(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestSource(p) : statSync(p).mtimeMs);
  }
  return newest;
}

/** Compile dist/ when it is missing or older than src/ or bench/ (npm test builds first; this covers running vitest alone). */
export function ensureBuilt(): void {
  const newest = Math.max(newestSource(path.join(ROOT, 'src')), newestSource(path.join(ROOT, 'bench')));
  if (existsSync(CLI_JS) && statSync(CLI_JS).mtimeMs >= newest) return;
  const r = spawnSync('npm', ['run', 'build'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`npm run build failed:\n${r.stdout}\n${r.stderr}`);
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `l2flow <args>` to completion with exactly `env` (plus PATH). */
export function runCli(args: string[], env: Record<string, string>, timeoutMs = 20_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...TEST_HTTP_ENV, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`l2flow ${args.join(' ')} did not finish in ${timeoutMs} ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export interface Runtime {
  child: ChildProcess;
  /** Every log line so far (stdout, JSON). */
  logs: string[];
  stderr: string[];
  /** Send SIGTERM and resolve with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Spawn the long-running `l2flow run [args]` (or another long-running command: start, demo) with exactly `env` (plus PATH). */
export function startRuntime(env: Record<string, string>, args: string[] = [], command = 'run'): Runtime {
  const child = spawn(process.execPath, [BIN, command, ...args], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...TEST_HTTP_ENV, ...env } });
  const logs: string[] = [];
  const stderr: string[] = [];
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    const lines = buf.split('\n');
    buf = lines.pop()!;
    logs.push(...lines.filter(Boolean));
  });
  child.stderr!.on('data', (d: Buffer) => stderr.push(d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    logs,
    stderr,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Poll `fn` until it returns a truthy value; throws with `what` after `timeoutMs`. */
export async function until<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 15_000, everyMs = 25): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Environment keys that configure l2flow: cleared around an in-process CLI call so only the given ones count. */
const CONFIG_ENV = /^(L2FLOW_(?!TEST_)|AIRFLOW_CONN_|DWH_CONN_ID$|SAP_CONN_ID$|SMTP_CONN_ID$|EMAIL_)/;

/** `main(argv)` in this process with exactly `env` as its configuration; process.env is restored afterwards. */
export async function runMain(argv: string[], env: Record<string, string>): Promise<{ code: number; out: string; err: string }> {
  const saved = { ...process.env };
  for (const k of Object.keys(process.env)) if (CONFIG_ENV.test(k)) delete process.env[k];
  Object.assign(process.env, TEST_HTTP_ENV, env);
  const out: string[] = [];
  const err: string[] = [];
  try {
    const code = await main(argv, { out: (s) => out.push(s), err: (s) => err.push(s) });
    return { code, out: out.join('\n'), err: err.join('\n') };
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}
