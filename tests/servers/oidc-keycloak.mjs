// oidc-provider (panva, a certified OpenID provider) laid out as a Keycloak realm:
// issuer http://127.0.0.1:PORT/realms/api-keys, token endpoint .../protocol/openid-connect/token.
// Two clients: `post-client` (client_secret_post) and `basic-client` (client_secret_basic), whose
// secrets contain characters that must be encoded. Prints `READY <port>`; `GET /__count` answers the number of tokens issued.
import http from 'node:http';
import Provider from 'oidc-provider';

const TTL = Number(process.env.TOKEN_TTL || 300);
const POST_SECRET = process.env.POST_SECRET;
const BASIC_SECRET = process.env.BASIC_SECRET;
if (!POST_SECRET || !BASIC_SECRET) {
  console.error('POST_SECRET and BASIC_SECRET must be set');
  process.exit(2);
}
const prefix = '/realms/api-keys';
const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const port = server.address().port;

const client = (id, secret, method) => ({
  client_id: id,
  client_secret: secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: method,
});
const provider = new Provider(`http://127.0.0.1:${port}${prefix}`, {
  clients: [client('post-client', POST_SECRET, 'client_secret_post'), client('basic-client', BASIC_SECRET, 'client_secret_basic')],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://api.example.test',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({ scope: 'api', accessTokenFormat: 'jwt', accessTokenTTL: TTL }),
    },
  },
  routes: { token: '/protocol/openid-connect/token' },
});
let issued = 0;
provider.on('grant.success', () => {
  issued += 1;
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url === '/__count') {
    res.setHeader('content-type', 'text/plain');
    res.end(String(issued));
  } else if (req.url.startsWith(prefix)) {
    // Tell oidc-provider where it is mounted, as express would, so its URLs keep the prefix.
    req.originalUrl = req.url;
    req.url = req.url.slice(prefix.length) || '/';
    callback(req, res);
  } else {
    res.statusCode = 404;
    res.setHeader('content-type', 'application/json');
    res.end('{"error":"Realm does not exist"}');
  }
});
console.log(`READY ${port}`);
