import { Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import type { Observable } from 'rxjs';
import type { RunEvent } from '../supervisor.js';

/** GET /api/events: every run event of this process as server-sent events (`event: run`, JSON data), live, no replay. */

/** Open streams, ended all at once when the server stops (else an open stream would keep the process alive). */
export interface StreamSet {
  endAll(): void;
}

/** The event stream route and the handle that ends its open streams. */
export function eventRoutes(events$: Observable<RunEvent>, stringify: (v: unknown) => string, heartbeatMs = 15_000) {
  const open = new Set<() => void>();
  const app = new Hono().get('/', (c) =>
    streamSSE(c, async (stream) => {
      let end!: () => void;
      const ended = new Promise<void>((resolve) => (end = resolve));
      open.add(end);
      // One write at a time, in order: events arrive synchronously, writes are asynchronous.
      let chain: Promise<unknown> = Promise.resolve();
      const write = (fn: () => Promise<unknown>) => (chain = chain.then(fn).catch(end));
      const sub = events$.subscribe({
        next: (e) => void write(() => stream.writeSSE({ event: 'run', data: stringify(e) })),
        complete: end,
      });
      // A comment at once tells the client it is subscribed; later ones keep proxies from closing an idle stream.
      void write(() => stream.write(': subscribed\n\n'));
      const beat = setInterval(() => void write(() => stream.write(': heartbeat\n\n')), heartbeatMs);
      stream.onAbort(end);
      try {
        await ended;
        await chain;
      } finally {
        clearInterval(beat);
        sub.unsubscribe();
        open.delete(end);
      }
    }),
  );
  const streams: StreamSet = {
    endAll: () => {
      for (const end of open) end();
    },
  };
  return { app, streams };
}
