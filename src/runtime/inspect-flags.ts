import { UsageError, type FlagSpec } from './args.js';
import type { L2flowOptions } from './api.js';

/** The flags of `l2flow run`. */
export const RUN_FLAGS: FlagSpec[] = [
  { name: 'inspect', type: 'boolean', description: 'report the live actors to the Stately inspector' },
  { name: 'inspect-port', type: 'string', description: 'the inspector relay port (default 8090)' },
];

/** `--inspect [--inspect-port N]` as createL2flow's `inspect` option; --inspect-port alone implies --inspect. */
export function runInspect(f: Record<string, string | boolean>): L2flowOptions['inspect'] {
  const raw = f['inspect-port'];
  if (raw === undefined) return f.inspect === true;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`run: --inspect-port ${String(raw)} is not a port: write a number 1-65535`);
  return { port };
}
