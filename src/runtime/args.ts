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
  const valid = () => specs.map((s) => `--${s.name}${s.type === 'string' ? ' <value>' : ''}`).join(', ') || 'none';
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (!arg.startsWith('--')) throw new UsageError(`${command}: unexpected argument "${arg}"; flags: ${valid()}`);
    const [rawName, inline] = arg.slice(2).split('=', 2) as [string, string | undefined];
    const spec = specs.find((s) => s.name === rawName);
    if (!spec) throw new UsageError(`${command}: unknown flag --${rawName}; valid flags: ${valid()}`);
    if (spec.type === 'boolean') {
      if (inline !== undefined) throw new UsageError(`${command}: --${spec.name} takes no value`);
      out[spec.name] = true;
      continue;
    }
    const value = inline ?? args[++i];
    if (value === undefined || value.startsWith('--')) throw new UsageError(`${command}: --${spec.name} needs a value (${spec.description})`);
    out[spec.name] = value;
  }
  return out;
}
