// A container registry's front door for the docker-credential-broker tests: it asks for Basic credentials
// (`WWW-Authenticate: Basic`), accepts a password only when it is a JWT the issuer at ISSUER signed (its JWKS at
// ISSUER/jwks, verified with jose) for AUDIENCE, and then answers the distribution API's `GET /v2/` and
// `GET /v2/<name>/tags/list`. Prints `READY <port>`; `GET /__seen` answers the user names it accepted.
import http from 'node:http';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const ISSUER = process.env.ISSUER;
const AUDIENCE = process.env.AUDIENCE;
const jwks = createRemoteJWKSet(new URL(`${ISSUER}/jwks`));
const seen = [];

const server = http.createServer(async (req, res) => {
  if (req.url === '/__seen') {
    res.setHeader('content-type', 'application/json');
    return res.end(JSON.stringify(seen));
  }
  const deny = () => {
    res.writeHead(401, { 'www-authenticate': 'Basic realm="broker-test-registry"', 'content-type': 'application/json' });
    res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }));
  };
  const auth = req.headers.authorization || '';
  if (!auth.startsWith('Basic ')) return deny();
  const [user, ...rest] = Buffer.from(auth.slice(6), 'base64').toString().split(':');
  try {
    await jwtVerify(rest.join(':'), jwks, { audience: AUDIENCE });
  } catch {
    return deny();
  }
  seen.push(user);
  res.setHeader('docker-distribution-api-version', 'registry/2.0');
  res.setHeader('content-type', 'application/json');
  if (req.url === '/v2/') return res.end('{}');
  const m = req.url.match(/^\/v2\/(.+)\/tags\/list/);
  if (m) return res.end(JSON.stringify({ name: m[1], tags: ['v1', 'v2'] }));
  res.writeHead(404);
  res.end(JSON.stringify({ errors: [{ code: 'NAME_UNKNOWN', message: 'unknown' }] }));
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
console.log(`READY ${server.address().port}`);
