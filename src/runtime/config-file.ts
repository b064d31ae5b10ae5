import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { z } from 'zod';

/** yaml, loaded by the first YAML file read (72 modules, ~50 ms: a JSON file or none at all does without it). */
let yamlParse: ((text: string) => unknown) | undefined;
const parseYaml = (text: string): unknown =>
  (yamlParse ??= (createRequire(import.meta.url)('yaml') as typeof import('yaml')).parse)(text);

/** The L2FLOW_CONFIG file: reading it, and turning schema issues into messages that name the key and the fix. */

/** A setting an operator must fix; `key` names it as the operator writes it. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly key: string,
    readonly problem: string,
    /** The file the key was read from, when it came from L2FLOW_CONFIG. */
    readonly source?: string,
  ) {
    super(`configuration error: ${key}${source ? ` (in ${source})` : ''}: ${problem}`);
  }
}


/** A short, quoted rendering of a value an operator wrote (never used for connection URIs, which may hold secrets). */
export function quote(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v) ?? String(v);
  return JSON.stringify(s.length > 60 ? `${s.slice(0, 57)}...` : s);
}

function typeName(v: unknown): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'empty (null)';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return `a ${typeof v} (${quote(v)})`;
}

const EXPECTED: Record<string, string> = {
  number: 'a number (unquoted)',
  int: 'a whole number (unquoted)',
  string: 'a text value',
  boolean: 'true or false',
  object: 'a mapping of settings (key: value)',
  record: 'a mapping of settings (key: value)',
  array: 'a list',
};

/** Messages for the file schema's issues that carry no message of their own: say what is wrong and what to write. */
export const fileErrorMap: z.core.$ZodErrorMap = (iss) => {
  switch (iss.code) {
    case 'invalid_type': {
      const want = EXPECTED[iss.expected] ?? iss.expected;
      if (iss.input === undefined) return `is required: write ${want}`;
      if ((iss.expected === 'number' || iss.expected === 'int') && typeof iss.input === 'number') return `must be ${want}, not ${iss.input}`;
      const unquote = (iss.expected === 'number' || iss.expected === 'int') && typeof iss.input === 'string' && Number.isFinite(Number(iss.input));
      return `must be ${want}, not ${typeName(iss.input)}${unquote ? ': remove the quotes' : ''}`;
    }
    case 'too_small':
      if (iss.origin === 'number' || iss.origin === 'int') return `must be ${iss.inclusive ? 'at least' : 'greater than'} ${String(iss.minimum)}`;
      if (iss.origin === 'string') return 'must not be empty';
      return `must hold at least ${String(iss.minimum)} item(s)`;
    case 'too_big':
      return `must be at most ${String(iss.maximum)}`;
    case 'invalid_value':
      return `must be ${iss.values.length === 1 ? '' : 'one of '}${iss.values.map((v) => JSON.stringify(v)).join(', ')}`;
    default:
      return undefined;
  }
};

/** The keys a strict object accepts at `at` (a path into the file), for "did you mean" help; [] when unknown. */
function validKeysAt(schema: z.ZodType, at: PropertyKey[], raw: unknown): string[] {
  let s: z.ZodType = schema;
  let value: unknown = raw;
  const unwrap = () => {
    for (;;) {
      if (s instanceof z.ZodOptional || s instanceof z.ZodDefault || s instanceof z.ZodPrefault) s = s.def.innerType as z.ZodType;
      else if (s instanceof z.ZodPipe) s = s.def.in as z.ZodType;
      else if (s instanceof z.ZodDiscriminatedUnion) {
        const disc: string = s.def.discriminator;
        const kind = value && typeof value === 'object' ? (value as Record<string, unknown>)[disc] : undefined;
        const option = (s.options as z.ZodType[]).find((o) => o instanceof z.ZodObject && (o.shape as Record<string, z.ZodType>)[disc]?.safeParse(kind).success);
        if (!option) return;
        s = option;
      } else return;
    }
  };
  for (const part of at) {
    unwrap();
    value = value && typeof value === 'object' ? (value as Record<PropertyKey, unknown>)[part] : undefined;
    if (s instanceof z.ZodObject) s = (s.shape as Record<string, z.ZodType>)[String(part)] ?? z.never();
    else if (s instanceof z.ZodRecord) s = s.valueType as z.ZodType;
    else return [];
  }
  unwrap();
  return s instanceof z.ZodObject ? Object.keys(s.shape) : [];
}

/** The L2FLOW_CONFIG file's settings as written (YAML or JSON), not yet checked; {} for an empty file. */
export function readConfigFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : code === 'EACCES' ? 'permission denied' : code;
    throw new ConfigError('L2FLOW_CONFIG', `cannot read ${file} (${why}): point L2FLOW_CONFIG at an existing YAML or JSON file, or unset it`);
  }
  const json = /\.json$/i.test(file);
  try {
    return (json ? JSON.parse(text) : parseYaml(text)) ?? {};
  } catch (err) {
    // Parser messages can quote the file's text, and the file may hold connection passwords: give the position only.
    throw new ConfigError('L2FLOW_CONFIG', `${file} is not valid ${json ? 'JSON' : 'YAML'} (${parseErrorWhere(text, err)}): fix the syntax there`);
  }
}

/** The ConfigError of a schema issue found in the file `source`: unknown keys list the valid ones at their level. */
export function fileIssueError(schema: z.ZodType, issue: z.core.$ZodIssue, raw: unknown, source: string | undefined): ConfigError {
  if (issue.code === 'unrecognized_keys') {
    const where = issue.path.join('.');
    const valid = validKeysAt(schema, issue.path, raw);
    return new ConfigError(
      issue.keys.map((k) => (where ? `${where}.${k}` : k)).join(', '),
      `unknown setting: remove it or check its spelling${valid.length ? `; valid settings${where ? ` under ${where}` : ''}: ${valid.join(', ')}` : ''}`,
      source,
    );
  }
  return new ConfigError(issue.path.join('.') || '(top level)', issue.message, source);
}

/** "line L, column C" of a JSON or YAML syntax error, without quoting the text. */
function parseErrorWhere(text: string, err: unknown): string {
  const linePos = (err as { linePos?: [{ line: number; col: number }] }).linePos; // yaml's YAMLParseError
  if (linePos?.[0]) return `line ${linePos[0].line}, column ${linePos[0].col}`;
  const message = (err as Error).message ?? '';
  const at = (offset: number) => {
    const before = text.slice(0, offset);
    return `line ${before.split('\n').length}, column ${offset - before.lastIndexOf('\n')}`;
  };
  const pos = /at position (\d+)/.exec(message);
  if (pos) return at(Number(pos[1]));
  // V8's `Unexpected token 'x', ..."<about 10 characters either side>"... is not valid JSON`: find that excerpt.
  const excerpt = /^Unexpected token .*?, (\.\.\.)?"(.*)"(\.\.\.)? is not valid JSON$/s.exec(message);
  if (excerpt?.[2]) {
    const i = text.indexOf(excerpt[2]);
    if (i >= 0) return at(i + (excerpt[1] ? 10 : 0));
  }
  // JSON is YAML: the YAML parser can locate what JSON.parse only quoted.
  try {
    parseYaml(text);
  } catch (yamlErr) {
    const lp = (yamlErr as { linePos?: [{ line: number; col: number }] }).linePos;
    if (lp?.[0]) return `line ${lp[0].line}, column ${lp[0].col}`;
  }
  return /end of JSON input/i.test((err as Error).message ?? '') ? 'the file ends too early' : 'syntax error';
}
