// oidc-provider (panva, a certified OpenID provider) for the client authentication methods of RFC 7523 and RFC 8705
// and an RFC 8693 token-exchange grant, laid out as a Keycloak realm like oidc-keycloak.mjs.
//
// Reads a JSON file named by argv[2], written by the test:
//   clients: [{ client_id, method, secret?, keys?: [public PEM, ...], cert?: certificate PEM (self-signed method),
//               san_dns?: "name" (tls_client_auth), grants?: [...] }]
//   tls: { cert, key, ca }     PEM paths: the HTTPS listener's certificate and key, and the CA of client certificates
//   subject_keys: [PEM]        public keys whose signatures make an external subject token (a Kubernetes one) valid
// Listens on plain HTTP (the issuer) and on HTTPS asking for a client certificate (the discovery document's
// `mtls_endpoint_aliases.token_endpoint`). Prints `READY <http port> <https port>`. `GET /__count` answers the number
// of tokens issued.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const TTL = 300;
const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const conf = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const prefix = '/realms/api-keys';
const read = (p) => fs.readFileSync(p, 'utf8');

const plain = http.createServer();
const tls = https.createServer({
  cert: read(conf.tls.cert),
  key: read(conf.tls.key),
  ca: [read(conf.tls.ca)],
  requestCert: true,
  rejectUnauthorized: false, // the provider decides: certificateAuthorized below
});
await new Promise((resolve) => plain.listen(0, '127.0.0.1', resolve));
await new Promise((resolve) => tls.listen(0, '127.0.0.1', resolve));
const port = plain.address().port;
const tlsPort = tls.address().port;
const issuer = `http://127.0.0.1:${port}${prefix}`;

// The server's own signing key: the access tokens it issues, and the tokens it accepts as exchange subjects.
const { privateKey, publicKey } = await jose.generateKeyPair('ES256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: 'server', alg: 'ES256', use: 'sig' };
const trusted = jose.createLocalJWKSet({
  keys: [
    { ...(await jose.exportJWK(publicKey)), kid: 'server', alg: 'ES256' },
    ...(conf.subject_keys || []).map((pem, i) => ({
      ...crypto.createPublicKey(pem).export({ format: 'jwk' }),
      kid: `subject-${i}`,
    })),
  ],
});

const der = (pem) => crypto.createPublicKey(pem);
const client = (c) => {
  const out = {
    client_id: c.client_id,
    grant_types: c.grants || ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: c.method,
    id_token_signed_response_alg: 'ES256', // the server's one signing key
  };
  if (c.secret) out.client_secret = c.secret;
  if (c.keys) {
    out.jwks = { keys: c.keys.map((k) => ({ ...der(k.pem).export({ format: 'jwk' }), ...(k.kid ? { kid: k.kid } : {}) })) };
  }
  if (c.cert) {
    const x = new crypto.X509Certificate(c.cert);
    out.jwks = { keys: [{ ...x.publicKey.export({ format: 'jwk' }), x5c: [x.raw.toString('base64')] }] };
  }
  if (c.san_dns) out.tls_client_auth_san_dns = c.san_dns;
  if (c.method.includes('tls_client_auth')) out.tls_client_certificate_bound_access_tokens = true;
  return out;
};

const peer = (ctx) => {
  const s = ctx.req.socket;
  const cert = typeof s.getPeerX509Certificate === 'function' ? s.getPeerX509Certificate() : undefined;
  if (process.env.BROKER_TEST_SERVER_LOGS) console.error('peer', Boolean(cert), s.authorized, s.authorizationError, cert?.subjectAltName);
  return cert;
};

const provider = new Provider(issuer, {
  clients: conf.clients.map(client),
  jwks: { keys: [signingJwk] },
  clientAuthMethods: ['none', 'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt',
    'tls_client_auth', 'self_signed_tls_client_auth'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['HS256', 'HS384', 'HS512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512',
      'ES256', 'ES384', 'EdDSA'],
  },
  discovery: {
    mtls_endpoint_aliases: { token_endpoint: `https://127.0.0.1:${tlsPort}${prefix}/protocol/openid-connect/token` },
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peer,
      certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_san_dns'
        && (peer(ctx)?.subjectAltName || '').split(', ').includes(`DNS:${expected}`),
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://api.example.test',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api', accessTokenFormat: 'jwt', accessTokenTTL: TTL, jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
  routes: { token: '/protocol/openid-connect/token' },
});

let issued = 0; // every grant, the exchange's too, ends in `grant.success`
provider.on('grant.success', () => {
  issued += 1;
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

// RFC 8693: the subject token must be signed by this server or by a subject key; the new token names the subject
// as `sub` and the authenticated client as the actor.
provider.registerGrantType(EXCHANGE, async (ctx) => {
  const { subject_token: subject, subject_token_type: type, actor_token: actor } = ctx.oidc.params;
  if (!subject || !type) throw new errors.InvalidRequest('subject_token and subject_token_type are required');
  let claims;
  try {
    ({ payload: claims } = await jose.jwtVerify(subject, trusted));
  } catch (e) {
    throw new errors.InvalidGrant(`subject_token is not valid: ${e.code || 'bad token'}`);
  }
  const token = await new jose.SignJWT({
    client_id: ctx.oidc.client.clientId,
    act: { sub: ctx.oidc.client.clientId },
    subject_token_type: type,
    ...(actor ? { actor_seen: true } : {}),
  })
    .setProtectedHeader({ alg: 'ES256', kid: 'server', typ: 'at+jwt' })
    .setIssuer(issuer)
    .setSubject(String(claims.sub || claims.client_id))
    .setIssuedAt()
    .setJti(crypto.randomUUID())
    .setExpirationTime(`${TTL}s`)
    .sign(privateKey);
  ctx.body = {
    access_token: token,
    issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    token_type: 'Bearer',
    expires_in: TTL,
  };
}, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'audience',
  'resource', 'scope']);

const callback = provider.callback();
const serve = (req, res) => {
  if (req.url === '/__count') {
    res.setHeader('content-type', 'text/plain');
    res.end(String(issued));
  } else if (req.url.startsWith(prefix)) {
    req.originalUrl = req.url;
    req.url = req.url.slice(prefix.length) || '/';
    callback(req, res);
  } else {
    res.statusCode = 404;
    res.end();
  }
};
plain.on('request', serve);
tls.on('request', serve);
console.log(`READY ${port} ${tlsPort}`);
