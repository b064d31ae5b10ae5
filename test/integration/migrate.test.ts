import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { createSplitTestDbs, createTestDb, schemasOf, type TestDb } from '../helpers/db.js';
import { checkFlagTrigger, migrate, SQL_DIR } from '../../src/runtime/migrate.js';

describe('migrations', () => {
  let db: TestDb;
  beforeAll(async () => { db = await createTestDb({ migrate: false }); });
  afterAll(async () => { await db.drop(); });

  it('keeps an existing md table and its rows, applies each file once and installs the flag trigger', async () => {
    await db.pool.query(`create schema md; create table md.dwh_flag (flag_cd text, bussines_date date, extra text);
      insert into md.dwh_flag values ('x', '2024-01-01', 'kept')`);
    expect(await checkFlagTrigger(db.pool, 'md.dwh_flag')).toMatch(/l2flow migrate/);
    const first = await migrate(db.pool, { flagTable: 'md.dwh_flag' });
    expect(first.applied).toEqual(['001_l2flow.sql', '002_md.sql', '003_sap_send_error.sql', '004_schedule.sql', '005_attempts_audit.sql', '006_deadlines.sql', '007_step_intent.sql', '008_owner_fence.sql', '009_unrecorded_guard.sql']);
    const again = await migrate(db.pool, { flagTable: 'md.dwh_flag' });
    expect(again.applied).toEqual([]);
    const { rows } = await db.pool.query('select extra from md.dwh_flag');
    expect(rows).toEqual([{ extra: 'kept' }]);
    expect(await checkFlagTrigger(db.pool, 'md.dwh_flag')).toBeNull();
  });

  it('notify off (flagTrigger: false): no trigger installed, and the start-up check asks only for the table', async () => {
    await db.pool.query('create table md.their_flag (flag_cd text, bussines_date date)');
    expect(await migrate(db.pool, { flagTable: 'md.their_flag', flagTrigger: false })).toEqual({ applied: [], flagTrigger: 'skipped' });
    const { rows } = await db.pool.query(`select 1 from pg_trigger where tgrelid = 'md.their_flag'::regclass`);
    expect(rows).toEqual([]);
    expect(await checkFlagTrigger(db.pool, 'md.their_flag', { trigger: false })).toBeNull();
    expect(await checkFlagTrigger(db.pool, 'md.their_flag')).toMatch(/l2flow migrate.*or set sensors\.wait_for_l2_full_load\.notify: false \(L2FLOW_FLAG_NOTIFY=false\)/);
    expect(await checkFlagTrigger(db.pool, 'md.no_such_flag', { trigger: false })).toMatch(/does not exist/);
  });

  it('names the fix when the flag table is missing', async () => {
    expect(await checkFlagTrigger(db.pool, 'md.no_such_flag')).toMatch(/does not exist.*l2flow migrate/);
  });

  it('a database with 001–006 applied (before the state connection existed) migrates without errors', async () => {
    const old = await createTestDb();
    try {
      // As a deployment of the previous version left it: 001–006 recorded, no step_intent table, no owner fence.
      await old.pool.query(`drop table l2flow.step_intent; drop function l2flow.assert_owner(text, text);
        delete from l2flow.schema_migrations where version >= 7`);
      expect((await migrate(old.pool, { flagTable: 'md.dwh_flag' })).applied).toEqual(['007_step_intent.sql', '008_owner_fence.sql', '009_unrecorded_guard.sql']);
      expect(await checkFlagTrigger(old.pool, 'md.dwh_flag')).toBeNull();
      expect(await schemasOf(old.pool, ['l2flow', 'md'])).toEqual(['l2flow', 'md']);
    } finally {
      await old.drop();
    }
  });
});

describe('migrations with a separate state database (L2FLOW_CONN_STATE)', () => {
  it("l2flow's schema goes to the state database, the warehouse gets only md, the sequence and the flag trigger", async () => {
    const split = await createSplitTestDbs({ migrate: false });
    try {
      const first = await migrate(split.db, { flagTable: 'md.dwh_flag' });
      expect(first.applied).toHaveLength(9);
      expect(await schemasOf(split.dwh.pool, ['l2flow', 'md'])).toEqual(['md']);
      expect(await schemasOf(split.state.pool, ['l2flow', 'md'])).toEqual(['l2flow']);
      expect((await split.state.pool.query('select count(*)::int as n from l2flow.schema_migrations')).rows[0].n).toBe(9);
      expect((await split.dwh.pool.query(`select nextval('md.load_id_seq')::int as n`)).rows[0].n).toBe(1);
      expect(await checkFlagTrigger(split.dwh.pool, 'md.dwh_flag')).toBeNull();

      // The trigger on the warehouse notifies on the flag channel, with no l2flow function there.
      const listener = new pg.Client({ connectionString: split.dwh.uri });
      await listener.connect();
      try {
        const got = new Promise<string>((resolve) => listener.on('notification', (n) => resolve(`${n.channel} ${n.payload}`)));
        await listener.query('listen l2flow_dwh_flag');
        await split.dwh.pool.query(`insert into md.dwh_flag (flag_cd, bussines_date) values ('f', '2024-01-02')`);
        expect(await got).toBe('l2flow_dwh_flag {"flag_cd" : "f", "business_date" : "2024-01-02"}');
      } finally {
        await listener.end();
      }

      // Again: nothing new for the state database; the warehouse part is re-applied harmlessly.
      expect((await migrate(split.db, { flagTable: 'md.dwh_flag' })).applied).toEqual([]);
      expect((await split.dwh.pool.query('select count(*)::int as n from md.dwh_flag')).rows[0].n).toBe(1);
      // A new, empty warehouse behind an already migrated state database gets its part all the same.
      await split.dwh.pool.query('drop schema md cascade');
      expect((await migrate(split.db, { flagTable: 'md.dwh_flag' })).applied).toEqual([]);
      expect(await checkFlagTrigger(split.dwh.pool, 'md.dwh_flag')).toBeNull();
      expect(await schemasOf(split.dwh.pool, ['l2flow', 'md'])).toEqual(['md']);
    } finally {
      await split.drop();
    }
  });

  it('migrates a warehouse l2flow does not own: no CREATE on the database, md made by its DBA, only TRIGGER on the flag table', async () => {
    const split = await createSplitTestDbs({ migrate: false });
    const role = `l2flow_wh_${split.dwh.name}`;
    const admin = new pg.Client({ connectionString: split.dwh.uri.replace(/\/[^/]*$/, '/postgres') });
    await admin.connect();
    let restricted: pg.Pool | undefined;
    try {
      // The DBA's warehouse: md exists with its tables; l2flow may use md and create in it, not create schemas.
      await split.dwh.pool.query(readFileSync(path.join(SQL_DIR, '002_md.sql'), 'utf8'));
      await split.dwh.pool.query(`create role ${role} login;
        revoke create on database ${split.dwh.name} from public;
        grant usage, create on schema md to ${role};
        grant select, insert, update on all tables in schema md to ${role};
        grant usage, select on sequence md.load_id_seq to ${role};
        grant trigger on md.dwh_flag to ${role}`);
      restricted = new pg.Pool({ connectionString: split.dwh.uri.replace(/^postgres:\/\/[^@]*@/, `postgres://${role}@`), max: 2 });
      const db = { state: split.state.pool, dwh: restricted };
      expect((await migrate(db, { flagTable: 'md.dwh_flag' })).applied).toHaveLength(9);
      expect((await migrate(db, { flagTable: 'md.dwh_flag' })).applied).toEqual([]);
      expect(await checkFlagTrigger(restricted, 'md.dwh_flag')).toBeNull();
      expect(await schemasOf(split.dwh.pool, ['l2flow', 'md'])).toEqual(['md']);
    } finally {
      await restricted?.end();
      await split.drop();
      await admin.query(`drop role if exists ${role}`).finally(() => admin.end());
    }
  });
});
