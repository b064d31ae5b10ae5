import { readdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import type pg from 'pg';
import { quoteQualified } from '../services/db/index.js';

/** Folder of numbered migrations, shipped beside dist/ and src/. */
// src/runtime/migrate.ts and dist/src/runtime/migrate.js sit at different depths below the package root.
const here = path.dirname(fileURLToPath(import.meta.url));
export const SQL_DIR = path.resolve(here, here.includes(`${path.sep}dist${path.sep}`) ? '../../../sql' : '../../sql');

const MIGRATION_LOCK = 727_001; // advisory lock key: one migrator at a time across processes

export interface MigrateResult {
  applied: string[];
  /** `skipped` when the flag sensor runs without notifications (sensors.wait_for_l2_full_load.notify: false). */
  flagTrigger: 'installed' | 'skipped';
}

/**
 * Apply every sql/NNN_*.sql not yet recorded in l2flow.schema_migrations, each in its own transaction,
 * then (re)install the notify trigger on the flag table unless `flagTrigger` is false (a warehouse whose DBA
 * refuses it: a trigger already there is left alone too). Safe to run concurrently and repeatedly.
 */
export async function migrate(pool: pg.Pool, opts: { flagTable: string; flagTrigger?: boolean }): Promise<MigrateResult> {
  const client = await pool.connect();
  const applied: string[] = [];
  try {
    await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK]);
    await client.query(`create schema if not exists l2flow;
      create table if not exists l2flow.schema_migrations (
        version integer primary key, name text not null, applied_at timestamptz not null default now())`);
    const done = new Set(
      (await client.query<{ version: number }>('select version from l2flow.schema_migrations')).rows.map((r) => r.version),
    );
    const files = await migrationFiles();
    for (const file of files) {
      const version = Number.parseInt(file, 10);
      if (done.has(version)) continue;
      const text = await readFile(path.join(SQL_DIR, file), 'utf8');
      await client.query('begin');
      try {
        await client.query(text);
        await client.query('insert into l2flow.schema_migrations (version, name) values ($1, $2)', [version, file]);
        await client.query('commit');
      } catch (err) {
        await client.query('rollback').catch(() => undefined);
        throw new Error(`migration ${file} failed: ${(err as Error).message}`, { cause: err });
      }
      applied.push(file);
    }
    if (opts.flagTrigger === false) return { applied, flagTrigger: 'skipped' };
    await installFlagTrigger(client, opts.flagTable);
    return { applied, flagTrigger: 'installed' };
  } finally {
    await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
    client.release();
  }
}

/** The shipped migrations, in the order they apply. */
async function migrationFiles(): Promise<string[]> {
  return (await readdir(SQL_DIR)).filter((f) => /^\d+_.+\.sql$/.test(f)).sort();
}

/** Shipped migrations the database has not recorded (all of them before the first `migrate`): readiness asks this. */
export async function pendingMigrations(db: pg.Pool | pg.ClientBase): Promise<string[]> {
  const { rows } = await db.query<{ version: number }>('select version from l2flow.schema_migrations').catch((err: { code?: string }) => {
    // No table (or no schema) yet: nothing is applied.
    if (err.code === '42P01' || err.code === '3F000') return { rows: [] };
    throw err;
  });
  const done = new Set(rows.map((r) => r.version));
  return (await migrationFiles()).filter((f) => !done.has(Number.parseInt(f, 10)));
}

/** Install (or replace) the AFTER INSERT OR UPDATE notify trigger on the configured flag table. */
export async function installFlagTrigger(client: pg.ClientBase, flagTable: string): Promise<void> {
  const table = quoteQualified(flagTable);
  await client.query('begin');
  try {
    await client.query(`drop trigger if exists l2flow_dwh_flag_notify on ${table}`);
    await client.query(`create trigger l2flow_dwh_flag_notify after insert or update on ${table}
      for each row execute function l2flow.notify_dwh_flag()`);
    await client.query('commit');
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw new Error(`could not install the notify trigger on ${flagTable}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Start-up check: the flag table exists and (unless `trigger` is false: notify off) carries l2flow's notify trigger.
 * Returns a message naming the fix, or null.
 */
export async function checkFlagTrigger(pool: pg.Pool, flagTable: string, opts: { trigger?: boolean } = {}): Promise<string | null> {
  const { rows } = await pool.query<{ exists: boolean; has_trigger: boolean }>(
    `select to_regclass($1) is not null as exists,
            exists (select 1 from pg_trigger where tgrelid = to_regclass($1) and tgname = 'l2flow_dwh_flag_notify') as has_trigger`,
    [flagTable],
  );
  const row = rows[0];
  if (!row?.exists) return `flag table ${flagTable} does not exist: create it or run \`l2flow migrate\` to create md.dwh_flag`;
  if (!row.has_trigger && opts.trigger !== false) {
    return `flag table ${flagTable} has no l2flow notify trigger: run \`l2flow migrate\` to install it, ` +
      'or set sensors.wait_for_l2_full_load.notify: false (L2FLOW_FLAG_NOTIFY=false) to wait for the flag by polling alone';
  }
  return null;
}
