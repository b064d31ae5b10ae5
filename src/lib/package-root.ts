import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The package's root (the nearest folder above `moduleUrl` holding package.json), where the files l2flow reads at run
 * time live: sql/, config/, src/dashboard/. The same from the sources (src/…, tests), the compiled modules
 * (dist/src/…) and the bundled CLI (dist/cli.cjs), which sit at different depths below it.
 */
export function packageRoot(moduleUrl: string): string {
  let dir = path.dirname(fileURLToPath(moduleUrl));
  while (!existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
}
