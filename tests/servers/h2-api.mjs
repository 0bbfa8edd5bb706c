// An API that speaks only HTTP/2 over TLS (ALPN h2, no HTTP/1.1 fallback), for the proxy's test: it answers each
// request with the HTTP version, the authority and the Authorization header it got. KEY and CERT are PEM file
// paths. Prints `READY <port>`.
import http2 from 'node:http2';
import fs from 'node:fs';

const server = http2.createSecureServer({
  key: fs.readFileSync(process.env.KEY),
  cert: fs.readFileSync(process.env.CERT),
  allowHTTP1: false,
});
server.on('request', (req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(
    JSON.stringify({
      version: req.httpVersion,
      authority: req.headers[':authority'],
      path: req.headers[':path'],
      authorization: req.headers.authorization || null,
    }),
  );
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
console.log(`READY ${server.address().port}`);
