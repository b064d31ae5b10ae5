import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    // Two test files at a time: the tests mostly wait on PostgreSQL, child processes and timers (a full run used 4 min
    // of CPU in 7), and vitest's default on a 2-core machine is one. Not more: each file opens its own connections.
    maxWorkers: 2,
    reporters: ['default'],
  },
});
