// The API behind `broker proxy` in the tests: it answers what it was sent, and plays a second host that must never
// see a token. Node's own http server, no framework. Prints `READY <api port> <other port>`.
//
// On the api port:
//   POST /__revoke (body: a token)  later requests with that token get 401 + WWW-Authenticate: Bearer error="invalid_token"
//   /upload                         streams the body through SHA-256; answers {"bytes", "sha256"}
//   /download?bytes=N               streams N bytes of 'x'
//   /redirect-away                  302 to the other port (an absolute URL on another origin)
//   /redirect-here                  302 to this api's own /echo?moved=1
//   anything else                   {"method", "url", "headers", "body"} (the body as text, when under 64 KiB)
// On the other port: every request is remembered; GET /__seen answers them as JSON (method, url, authorization).
import http from 'node:http';
import crypto from 'node:crypto';

const revoked = new Set();
let apiPort = 0;
let otherPort = 0;

const json = (res, status, value, headers = {}) => {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(value));
};

const api = http.createServer((req, res) => {
  // A profile whose api has the path /v2 reaches the same routes.
  const path = req.url.replace(/^\/v2(?=\/|$)/, '');
  const auth = req.headers.authorization || '';
  const token = auth.replace(/^Bearer /, '');
  if (req.url === '/__revoke') {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      revoked.add(body.trim());
      json(res, 200, { revoked: revoked.size });
    });
    return;
  }
  if (token && revoked.has(token)) {
    req.resume();
    json(res, 401, { error: 'invalid_token' }, { 'www-authenticate': 'Bearer error="invalid_token"' });
    return;
  }
  if (path === '/upload') {
    const hash = crypto.createHash('sha256');
    let bytes = 0;
    req.on('data', (c) => {
      bytes += c.length;
      hash.update(c);
    });
    req.on('end', () => json(res, 200, { bytes, sha256: hash.digest('hex'), authorization: auth }));
    return;
  }
  if (path.startsWith('/download')) {
    const n = Number(new URL(req.url, 'http://x').searchParams.get('bytes'));
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(n) });
    const chunk = Buffer.alloc(1 << 16, 'x');
    let left = n;
    const pump = () => {
      while (left > 0) {
        const part = left >= chunk.length ? chunk : chunk.subarray(0, left);
        left -= part.length;
        if (!res.write(part)) return res.once('drain', pump);
      }
      res.end();
    };
    pump();
    return;
  }
  if (path === '/redirect-away') {
    req.resume();
    res.writeHead(302, { location: `http://127.0.0.1:${otherPort}/stolen` });
    res.end();
    return;
  }
  if (path === '/redirect-here') {
    req.resume();
    res.writeHead(302, { location: `http://127.0.0.1:${apiPort}/echo?moved=1` });
    res.end();
    return;
  }
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size <= 65536) chunks.push(c);
  });
  req.on('end', () =>
    json(res, 200, {
      method: req.method,
      url: req.url,
      headers: req.headers,
      body: size <= 65536 ? Buffer.concat(chunks).toString() : null,
    }),
  );
});

const seen = [];
const other = http.createServer((req, res) => {
  if (req.url === '/__seen') return json(res, 200, seen);
  seen.push({ method: req.method, url: req.url, authorization: req.headers.authorization || null });
  req.resume();
  json(res, 200, { other: true });
});

await new Promise((resolve) => api.listen(0, '127.0.0.1', resolve));
await new Promise((resolve) => other.listen(0, '127.0.0.1', resolve));
apiPort = api.address().port;
otherPort = other.address().port;
console.log(`READY ${apiPort} ${otherPort}`);
