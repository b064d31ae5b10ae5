import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';

export interface SapRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  at: number;
}

/** How to answer the n-th request (1-based). */
export type SapHandler = (res: http.ServerResponse, n: number, req: SapRequest) => void;

export interface TestSapServer {
  base: string;
  requests: SapRequest[];
  /** Requests grouped by Idempotency-Key. */
  byKey(): Map<string, SapRequest[]>;
  setHandler(h: SapHandler): void;
  close(): Promise<void>;
}

/** A real HTTP server on 127.0.0.1 standing in for SAP: records every request, answers as the handler says. */
export async function startSapServer(handler: SapHandler = (res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')): Promise<TestSapServer> {
  const requests: SapRequest[] = [];
  let current = handler;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString(), at: Date.now() };
      requests.push(r);
      current(res, requests.length, r);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    byKey() {
      const m = new Map<string, SapRequest[]>();
      for (const r of requests) {
        const k = String(r.headers['idempotency-key']);
        m.set(k, [...(m.get(k) ?? []), r]);
      }
      return m;
    },
    setHandler(h) {
      current = h;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
