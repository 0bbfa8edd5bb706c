// oidc-provider (panva, a certified OpenID provider) with DPoP (RFC 9449) on, laid out as a Keycloak realm, and beside
// it a resource server that verifies what a DPoP-bound request must carry.
//
// Reads a JSON file named by argv[2], written by the test:
//   clients: [{ client_id, secret, bound?: true }]   bound: the client must use DPoP (`dpop_bound_access_tokens`)
//   token_nonce: bool   the token endpoint asks for a nonce (`use_dpop_nonce`) before it issues a token
//   api_nonce: bool     the resource server asks for a nonce before it accepts a request
// Prints `READY <issuer port> <api port>`.
//
// The resource server (any path on the api port) accepts a request only with `Authorization: DPoP <token>`, the
// token an access token this provider signed, and a `DPoP` proof whose signature verifies with its embedded key,
// whose key's thumbprint is the token's `cnf.jkt`, and whose `htm`, `htu` (no query), `ath`, `iat` (within 60 s),
// `jti` (never seen before) and, when asked for, `nonce` are right. It answers 200 with the proof's `jti`, else 401
// with `WWW-Authenticate: DPoP error="..."` and the reason.
//
// Counters, for the tests: `GET /__count` on the issuer port (tokens issued), `GET /__stats` on either port
// ({ issued, token_requests, token_nonce_asks, accepted, refused: {reason: n}, api_nonce_asks, jtis }).
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const TTL = 300;
const conf = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const prefix = '/realms/api-keys';

const idp = http.createServer();
const api = http.createServer();
await new Promise((resolve) => idp.listen(0, '127.0.0.1', resolve));
await new Promise((resolve) => api.listen(0, '127.0.0.1', resolve));
const port = idp.address().port;
const apiPort = api.address().port;
const issuer = `http://127.0.0.1:${port}${prefix}`;
const audience = `http://127.0.0.1:${apiPort}`;

const { privateKey, publicKey } = await jose.generateKeyPair('ES256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: 'server', alg: 'ES256', use: 'sig' };
const serverKeys = jose.createLocalJWKSet({ keys: [{ ...(await jose.exportJWK(publicKey)), kid: 'server', alg: 'ES256' }] });

const stats = { issued: 0, token_requests: 0, token_nonce_asks: 0, accepted: 0, refused: {}, api_nonce_asks: 0, jtis: 0 };

const provider = new Provider(issuer, {
  clients: conf.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
    id_token_signed_response_alg: 'ES256',
    ...(c.bound ? { dpop_bound_access_tokens: true } : {}),
  })),
  jwks: { keys: [signingJwk] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    dPoP: {
      enabled: true,
      nonceSecret: crypto.randomBytes(32),
      requireNonce: () => Boolean(conf.token_nonce),
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api', audience, accessTokenFormat: 'jwt', accessTokenTTL: TTL, jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
  routes: { token: '/protocol/openid-connect/token' },
});
provider.on('grant.success', () => {
  stats.issued += 1;
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const callback = provider.callback();
const json = (res, status, body, headers = {}) => {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
};

idp.on('request', (req, res) => {
  if (req.url === '/__count') return res.end(String(stats.issued));
  if (req.url === '/__stats') return json(res, 200, stats);
  if (!req.url.startsWith(prefix)) return json(res, 404, {});
  if (req.method === 'POST') {
    stats.token_requests += 1;
    res.on('finish', () => {
      if (res.statusCode === 400 && res.getHeader('dpop-nonce')) stats.token_nonce_asks += 1;
    });
  }
  req.originalUrl = req.url;
  req.url = req.url.slice(prefix.length) || '/';
  return callback(req, res);
});

// The resource server.
const seen = new Set();
const apiNonce = crypto.randomBytes(16).toString('base64url');
const refuse = (res, reason, error = 'invalid_dpop_proof', extra = {}) => {
  stats.refused[reason] = (stats.refused[reason] || 0) + 1;
  if (process.env.BROKER_TEST_SERVER_LOGS) console.error('refused', reason);
  json(res, 401, { error, reason }, { 'www-authenticate': `DPoP error="${error}", algs="ES256"`, ...extra });
};

api.on('request', async (req, res) => {
  if (req.url === '/__stats') return json(res, 200, stats);
  req.resume();
  await new Promise((resolve) => req.on('end', resolve));
  const auth = req.headers.authorization || '';
  if (!auth.startsWith('DPoP ')) return refuse(res, 'not a DPoP authorization', 'invalid_token');
  const token = auth.slice(5);
  let claims;
  try {
    ({ payload: claims } = await jose.jwtVerify(token, serverKeys, { issuer }));
  } catch (e) {
    return refuse(res, `token: ${e.code}`, 'invalid_token');
  }
  const jkt = claims.cnf && claims.cnf.jkt;
  if (!jkt) return refuse(res, 'the token is not DPoP-bound', 'invalid_token');
  const proofs = req.headersDistinct.dpop || [];
  if (proofs.length !== 1) return refuse(res, `${proofs.length} DPoP headers`);
  let header;
  let proof;
  try {
    ({ protectedHeader: header, payload: proof } = await jose.jwtVerify(proofs[0], jose.EmbeddedJWK, {
      typ: 'dpop+jwt', algorithms: ['ES256'],
    }));
  } catch (e) {
    return refuse(res, `proof signature: ${e.code}`);
  }
  if ((await jose.calculateJwkThumbprint(header.jwk)) !== jkt) return refuse(res, 'key is not the token\'s cnf.jkt');
  if (proof.htm !== req.method) return refuse(res, 'htm');
  const path = req.url.split('?')[0];
  if (proof.htu !== `http://127.0.0.1:${apiPort}${path}`) return refuse(res, `htu ${proof.htu}`);
  const ath = crypto.createHash('sha256').update(token).digest('base64url');
  if (proof.ath !== ath) return refuse(res, 'ath');
  if (typeof proof.iat !== 'number' || Math.abs(Date.now() / 1000 - proof.iat) > 60) return refuse(res, 'iat');
  if (typeof proof.jti !== 'string' || seen.has(proof.jti)) return refuse(res, 'jti replayed');
  if (conf.api_nonce && proof.nonce !== apiNonce) {
    stats.api_nonce_asks += 1;
    return refuse(res, 'nonce', 'use_dpop_nonce', { 'dpop-nonce': apiNonce });
  }
  seen.add(proof.jti);
  stats.jtis = seen.size;
  stats.accepted += 1;
  return json(res, 200, { ok: true, method: req.method, path, jti: proof.jti, client_id: claims.client_id });
});

console.log(`READY ${port} ${apiPort}`);
