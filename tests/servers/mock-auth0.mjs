// oauth2-mock-server (axa-group) as an Auth0-style tenant: POST /oauth/token with a JSON body.
// Hooks check client_id, client_secret and audience (401 access_denied otherwise, as Auth0 answers), and set
// the JWT `exp` and `expires_in` together. With REUSE_TOKEN=1 it hands back its cached token, with the remaining
// lifetime, until that has less than two seconds left (what Auth0 does: CHILI's sample shows `expires_in: 79045`).
// Prints `READY <port>`; `GET /__count` answers the number of tokens issued, `GET /__calls` the number of
// successful token requests (a handed-back token counts there only).
import http from 'node:http';
import crypto from 'node:crypto';
import { OAuth2Server } from 'oauth2-mock-server';

const TTL = Number(process.env.TOKEN_TTL || 300);
const CLIENT_ID = process.env.CLIENT_ID;
const CLIENT_SECRET = process.env.CLIENT_SECRET;
const AUDIENCE = process.env.AUDIENCE;
const REUSE = process.env.REUSE_TOKEN === '1';
if (!CLIENT_ID || !CLIENT_SECRET || !AUDIENCE) {
  console.error('CLIENT_ID, CLIENT_SECRET and AUDIENCE must be set');
  process.exit(2);
}
const server = new OAuth2Server(undefined, undefined, { endpoints: { token: '/oauth/token' } });
await server.issuer.keys.generate('RS256');

const ok = (body) =>
  body && body.grant_type === 'client_credentials' && body.client_id === CLIENT_ID && body.client_secret === CLIENT_SECRET && body.audience === AUDIENCE;

server.service.on('beforeTokenSigning', (token, req) => {
  const now = Math.floor(Date.now() / 1000);
  token.payload.iat = now;
  token.payload.exp = now + TTL;
  // Two tokens issued within one second differ, as real ones do (else a new token could equal the one it replaces).
  token.payload.jti = crypto.randomUUID();
  if (req.body && req.body.audience) token.payload.aud = req.body.audience;
});
let issued = 0;
let calls = 0;
let cached = null; // { body, expMs } of the last token issued, when REUSE
server.service.on('beforeResponse', (response, req) => {
  if (!ok(req.body)) {
    response.statusCode = 401;
    response.body = { error: 'access_denied', error_description: 'Unauthorized' };
    return;
  }
  calls += 1;
  const nowMs = Date.now();
  if (REUSE && cached && cached.expMs - nowMs >= 2000) {
    response.body = { ...cached.body, expires_in: Math.floor((cached.expMs - nowMs) / 1000) };
    return;
  }
  response.body.expires_in = TTL;
  issued += 1;
  cached = { body: { ...response.body }, expMs: nowMs + TTL * 1000 };
});
const handler = server.service.requestHandler;
const front = http.createServer((req, res) => {
  if (req.url === '/__count' || req.url === '/__calls') {
    res.setHeader('content-type', 'text/plain');
    res.end(String(req.url === '/__count' ? issued : calls));
  } else {
    handler(req, res);
  }
});
await new Promise((resolve) => front.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve));
const port = front.address().port;
server.issuer.url = `http://127.0.0.1:${port}`;
console.log(`READY ${port}`);
