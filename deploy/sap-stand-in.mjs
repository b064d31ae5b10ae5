// A stand-in for SAP's readiness endpoint in docker-compose.yml: answers every request 200 and logs it.
// Plain Node (no packages), so the stock node image runs it as it is. PORT (default 8089) is where it listens.
import http from 'node:http';

const port = Number(process.env.PORT ?? 8089);

http
  .createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      const key = req.headers['idempotency-key'] ?? '-';
      console.log(`${new Date().toISOString()} ${req.method} ${req.url} idempotency-key=${key} ${body}`);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
  })
  .listen(port, '0.0.0.0', () => console.log(`SAP stand-in listening on :${port}`));
