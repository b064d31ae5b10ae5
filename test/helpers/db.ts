import pg from 'pg';
import { randomBytes } from 'node:crypto';
import { migrate } from '../../src/runtime/migrate.js';
import type { Databases } from '../../src/services/db/index.js';

const ADMIN_URI = process.env.L2FLOW_TEST_ADMIN_URI ?? 'postgres://root@127.0.0.1:5432/postgres';

export interface TestDb {
  name: string;
  uri: string;
  pool: pg.Pool;
  drop(): Promise<void>;
}

/** A fresh database on the machine's PostgreSQL with l2flow's migrations applied; `drop()` removes it. */
export async function createTestDb(opts: { migrate?: boolean; flagTable?: string } = {}): Promise<TestDb> {
  const name = `l2flow_t_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: ADMIN_URI });
  await admin.connect();
  try {
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const uri = ADMIN_URI.replace(/\/[^/]*$/, `/${name}`);
  const pool = new pg.Pool({ connectionString: uri, max: 10, application_name: 'l2flow-test' });
  // pool.end() resolves before every backend is gone; the forced drop may then kill one mid-close.
  pool.on('error', () => undefined);
  if (opts.migrate !== false) await migrate(pool, { flagTable: opts.flagTable ?? 'md.dwh_flag' });
  return {
    name,
    uri,
    pool,
    async drop() {
      await pool.end().catch(() => undefined);
      const a = new pg.Client({ connectionString: ADMIN_URI });
      await a.connect();
      try {
        await a.query(`drop database if exists ${name} with (force)`);
      } finally {
        await a.end();
      }
    },
  };
}

/** A warehouse and a separate state database (connection id `state`) for l2flow's own tables. */
export interface SplitDbs {
  dwh: TestDb;
  state: TestDb;
  /** Both pools, as the services take them. */
  db: Databases;
  drop(): Promise<void>;
}

/** Two fresh databases, migrated as `l2flow migrate` does with L2FLOW_CONN_STATE set (unless `migrate: false`). */
export async function createSplitTestDbs(opts: { migrate?: boolean; flagTable?: string } = {}): Promise<SplitDbs> {
  const [dwh, state] = await Promise.all([createTestDb({ migrate: false }), createTestDb({ migrate: false })]);
  const db = { state: state.pool, dwh: dwh.pool };
  if (opts.migrate !== false) await migrate(db, { flagTable: opts.flagTable ?? 'md.dwh_flag' });
  return { dwh, state, db, drop: async () => void (await Promise.all([dwh.drop(), state.drop()])) };
}

/** The schemas of a database among `names` (what `\dn` would list of them). */
export async function schemasOf(pool: pg.Pool, names: string[]): Promise<string[]> {
  const { rows } = await pool.query<{ n: string }>('select nspname as n from pg_namespace where nspname = any($1) order by 1', [names]);
  return rows.map((r) => r.n);
}

/** Create the warehouse view the SAP step counts, with `rows` rows. */
export async function createSegmentationView(pool: pg.Pool, rows: number): Promise<void> {
  await pool.query(`create schema if not exists wk_export;
    create table if not exists wk_export.ds_client_segmentation (client_id bigint, segment text);
    create or replace view wk_export.ds_client_segmentation_last_v as select * from wk_export.ds_client_segmentation;`);
  await pool.query(`insert into wk_export.ds_client_segmentation select g, 'seg' || (g % 3) from generate_series(1, $1::int) g`, [rows]);
}
