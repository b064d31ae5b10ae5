import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ENV_KEYS } from '../../src/runtime/config-env.js';
import { settingsSchema } from '../../src/runtime/config-schema.js';

/** The README's configuration table is written by hand; this keeps it true to ENV_KEYS and the schema's defaults. */

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8');

interface Row { setting: string; where: string; default: string; meaning: string }

/** The rows of the table under `## Configuration` whose header is `| setting | where | default | meaning |`. */
function configTable(): Row[] {
  const section = README.slice(README.indexOf('\n## Configuration\n'));
  const lines = section.split('\n');
  const start = lines.findIndex((l) => /^\| setting \| where \| default \| meaning \|$/.test(l));
  expect(start, 'the Configuration section has its table').toBeGreaterThan(0);
  const rows: Row[] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    // `\|` inside a cell is an escaped bar, not a column boundary.
    const cells = line.slice(1, -1).split(/(?<!\\)\|/).map((c) => c.trim());
    expect(cells, line).toHaveLength(4);
    rows.push({ setting: cells[0]!, where: cells[1]!, default: cells[2]!, meaning: cells[3]! });
  }
  return rows;
}

/** Names written in backticks in a cell. */
const ticked = (cell: string) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);

const PLAIN = settingsSchema.parse({});
// A cron block given, so the defaults of its own keys (enabled, catchup) show; its expression is ours, not a default.
const WITH_CRON = settingsSchema.parse({ schedule: { cron: { expression: '@daily' } } });

/** The schema default of a settings key; undefined when it has none. */
function schemaDefault(key: string): unknown {
  if (key === 'schedule.cron.expression') return undefined;
  const walk = (root: unknown) => {
    let v: unknown = root;
    for (const part of key.split('.')) {
      if (v === null || typeof v !== 'object') return { through: false, v: undefined };
      v = (v as Record<string, unknown>)[part];
    }
    return { through: true, v };
  };
  const plain = walk(PLAIN);
  return plain.through ? plain.v : walk(WITH_CRON).v;
}

/** Variables l2flow reads that are not in ENV_KEYS, each documented in a row of its own. */
const READ_APART = ['L2FLOW_CONFIG', 'L2FLOW_CONN_<ID>', 'AIRFLOW_CONN_<ID>', 'L2FLOW_API_TOKEN'];

describe('README configuration table', () => {
  const rows = configTable();
  const envRows = new Map(rows.flatMap((r) => ticked(r.setting).filter((n) => /^[A-Z][A-Z0-9_<>]*$/.test(n)).map((n) => [n, r] as const)));

  it('lists every variable of ENV_KEYS with the settings key it sets', () => {
    for (const [variable, setting] of Object.entries(ENV_KEYS)) {
      const row = envRows.get(variable);
      expect(row, `README has no row for ${variable}`).toBeDefined();
      expect(row!.where, `${variable}'s "where" column`).toBe(`env / \`${setting.key}\``);
    }
  });

  it('lists no variable l2flow does not read', () => {
    for (const name of envRows.keys()) {
      expect(name in ENV_KEYS || READ_APART.includes(name), `README lists ${name}, which l2flow does not read`).toBe(true);
    }
    for (const name of READ_APART) expect(envRows.has(name), `README has no row for ${name}`).toBe(true);
  });

  it("gives each variable's schema default", () => {
    for (const [variable, setting] of Object.entries(ENV_KEYS)) {
      const cell = envRows.get(variable)!.default;
      const def = schemaDefault(setting.key);
      const shown = ticked(cell)[0];
      if (def === undefined || (Array.isArray(def) && def.length === 0)) {
        expect(cell, `${variable} has no default: its default column says none or —`).toMatch(/^(none|—)/);
      } else {
        expect(shown, `${variable}'s default (${setting.key})`).toBe(String(def));
      }
    }
  });

  it('names only settings the schema has, and every top-level one', () => {
    const top = Object.keys(settingsSchema.shape);
    for (const row of rows.filter((r) => r.where === 'file')) {
      for (const name of ticked(row.setting).filter((n) => n.includes('.'))) {
        expect(top, `README row ${row.setting}`).toContain(name.split('.')[0]);
      }
    }
    const table = rows.map((r) => `${r.setting} ${r.where} ${r.meaning}`).join('\n');
    for (const key of top) expect(table, `the table never mentions ${key}`).toMatch(new RegExp(`\`${key}[.:\`]`));
  });
});
