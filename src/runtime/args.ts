/** A small strict argv parser: unknown flags and missing values are usage errors that say what to write. */

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export interface FlagSpec {
  /** Flag name without dashes, e.g. `date`. */
  name: string;
  type: 'string' | 'boolean';
  description: string;
}

/** Parse `args` against `specs`; throws UsageError naming the bad flag and the valid ones. */
export function parseFlags(command: string, args: string[], specs: FlagSpec[]): Record<string, string | boolean> {
  const out: Record<string, string | boolean> = {};
  const valid = () =>
    specs.length === 0
      ? `${command} takes no flags`
      : `valid flags: ${specs.map((s) => `--${s.name}${s.type === 'string' ? ' <value>' : ''}`).join(', ')}`;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (!arg.startsWith('--') || arg === '--') throw new UsageError(`${command}: unexpected argument "${arg}"; ${valid()}`);
    // Split at the first `=` only: a value may itself contain `=`.
    const eq = arg.indexOf('=');
    const rawName = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    const spec = specs.find((s) => s.name === rawName);
    if (!spec) throw new UsageError(`${command}: unknown flag --${rawName}; ${valid()}`);
    if (spec.name in out) throw new UsageError(`${command}: --${spec.name} is given twice: give it once`);
    if (spec.type === 'boolean') {
      if (inline !== undefined) throw new UsageError(`${command}: --${spec.name} takes no value: write just --${spec.name}`);
      out[spec.name] = true;
      continue;
    }
    const value = inline ?? args[++i];
    if (value === undefined || value === '' || (inline === undefined && value.startsWith('--'))) {
      throw new UsageError(`${command}: --${spec.name} needs a value (${spec.description}): write --${spec.name} <value>`);
    }
    out[spec.name] = value;
  }
  return out;
}
