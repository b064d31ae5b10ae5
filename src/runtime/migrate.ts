import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import { quoteQualified, separateState, type Databases } from '../services/db/index.js';
import { DWH_FLAG_CHANNEL } from '../services/sensors/index.js';
import { packageRoot } from '../lib/package-root.js';

/** Folder of numbered migrations, shipped in the package beside dist/ and src/. */
export const SQL_DIR = path.join(packageRoot(import.meta.url), 'sql');

const MIGRATION_LOCK = 727_001; // advisory lock key: one migrator at a time across processes

export interface MigrateResult {
  applied: string[];
  /** `skipped` when the flag sensor runs without notifications (sensors.wait_for_l2_full_load.notify: false). */
  flagTrigger: 'installed' | 'skipped';
}

/** The database a migration file is for: its first line says `-- target: warehouse`; every other file is l2flow's own. */
export type MigrationTarget = 'state' | 'warehouse';

function targetOf(text: string): MigrationTarget {
  return /^--\s*target:\s*warehouse\b/.test(text) ? 'warehouse' : 'state';
}

/** Apply `text` in a transaction of its own on `client`, plus `after` (the bookkeeping) in the same one. */
async function applyFile(client: pg.ClientBase, file: string, text: string, after?: () => Promise<unknown>): Promise<void> {
  await client.query('begin');
  try {
    await client.query(text);
    await after?.();
    await client.query('commit');
  } catch (err) {
    await client.query('rollback').catch(() => undefined);
    throw new Error(`migration ${file} failed: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Apply every sql/NNN_*.sql not yet recorded in l2flow.schema_migrations, each in its own transaction, then
 * (re)install the notify trigger on the flag table unless `flagTrigger` is false (a warehouse whose DBA refuses it:
 * a trigger already there is left alone too). Safe to run concurrently and repeatedly.
 * With a separate state database (db.state ≠ db.dwh) l2flow's files go to the state database, which keeps the
 * bookkeeping, and the warehouse files (`-- target: warehouse`: the md tables if missing, the load-id sequence) go
 * to the warehouse at every run, idempotently, with the flag trigger: the warehouse gets no l2flow schema.
 */
export async function migrate(target: pg.Pool | Databases, opts: { flagTable: string; flagTrigger?: boolean }): Promise<MigrateResult> {
  // A lone pool: l2flow's tables in the warehouse, as before the state connection existed.
  const db: Databases = 'state' in target && 'dwh' in target ? target : { state: target, dwh: target };
  const separate = separateState(db);
  const client = await db.state.connect();
  const warehouse = separate ? await db.dwh.connect().catch((err: unknown) => {
    client.release();
    throw err;
  }) : client;
  const applied: string[] = [];
  try {
    await client.query('select pg_advisory_lock($1)', [MIGRATION_LOCK]);
    await client.query(`create schema if not exists l2flow;
      create table if not exists l2flow.schema_migrations (
        version integer primary key, name text not null, applied_at timestamptz not null default now())`);
    const done = new Set(
      (await client.query<{ version: number }>('select version from l2flow.schema_migrations')).rows.map((r) => r.version),
    );
    const record = (version: number, file: string) =>
      client.query('insert into l2flow.schema_migrations (version, name) values ($1, $2) on conflict do nothing', [version, file]);
    for (const file of await migrationFiles()) {
      const version = Number.parseInt(file, 10);
      const text = await readFile(path.join(SQL_DIR, file), 'utf8');
      if (separate && targetOf(text) === 'warehouse') {
        // Every time: the warehouse may be new while the state database already recorded the file.
        await applyFile(warehouse, file, text);
        if (!done.has(version)) {
          await record(version, file);
          applied.push(file);
        }
        continue;
      }
      if (done.has(version)) continue;
      await applyFile(client, file, text, () => record(version, file));
      applied.push(file);
    }
    if (opts.flagTrigger === false) return { applied, flagTrigger: 'skipped' };
    await installFlagTrigger(warehouse, opts.flagTable, separate);
    return { applied, flagTrigger: 'installed' };
  } finally {
    await client.query('select pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
    client.release();
    if (separate) warehouse.release();
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

/**
 * Install (or replace) the AFTER INSERT OR UPDATE notify trigger on the configured flag table. Its function is
 * l2flow.notify_dwh_flag() when l2flow's schema is in the warehouse; with a separate state database (`ownFunction`)
 * the warehouse has no l2flow schema, so the same function is created beside the flag table, as l2flow_notify_dwh_flag().
 */
export async function installFlagTrigger(client: pg.ClientBase, flagTable: string, ownFunction = false): Promise<void> {
  const table = quoteQualified(flagTable);
  await client.query('begin');
  try {
    let fn = { schema: 'l2flow', name: 'notify_dwh_flag' };
    if (ownFunction) {
      const { rows } = await client.query<{ schema: string | null }>(
        'select n.nspname as schema from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.oid = to_regclass($1)', [flagTable]);
      const schema = rows[0]?.schema;
      if (!schema) throw new Error(`flag table ${flagTable} does not exist in the warehouse`);
      fn = { schema, name: 'l2flow_notify_dwh_flag' };
      await client.query(`create or replace function ${quoteQualified(`${fn.schema}.${fn.name}`)}() returns trigger language plpgsql as $$
        begin
          perform pg_notify('${DWH_FLAG_CHANNEL}', json_build_object('flag_cd', new.flag_cd, 'business_date', new.bussines_date)::text);
          return null;
        end $$`);
    }
    // Already there with this function: left alone (dropping a trigger needs the table's owner; creating one, TRIGGER).
    const { rowCount } = await client.query(
      `select 1 from pg_trigger t join pg_proc p on p.oid = t.tgfoid join pg_namespace n on n.oid = p.pronamespace
        where t.tgrelid = to_regclass($1) and t.tgname = 'l2flow_dwh_flag_notify' and n.nspname = $2 and p.proname = $3`,
      [flagTable, fn.schema, fn.name]);
    if (!rowCount) {
      await client.query(`drop trigger if exists l2flow_dwh_flag_notify on ${table}`);
      await client.query(`create trigger l2flow_dwh_flag_notify after insert or update on ${table}
        for each row execute function ${quoteQualified(`${fn.schema}.${fn.name}`)}()`);
    }
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
