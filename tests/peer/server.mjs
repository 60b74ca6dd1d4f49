// A strict OpenID provider for oauthd's tests: panva's oidc-provider on 127.0.0.1.
//
//   node server.mjs            prints "peer listening on http://127.0.0.1:PORT" once ready
//
// Environment:
//   PEER_PORT         the port to listen on (default: a free one, new at each start)
//   PEER_ACCESS_TTL   access token lifetime in seconds (default 60)
//   PEER_CLIENT_SECRET  the confidential client's secret (default "peer-secret")
//
// Strict on purpose: PKCE S256 required, refresh tokens rotate on every use (replaying an
// old one revokes the whole grant), no clock tolerance, RFC 9207 `iss` on redirects.
import http from 'node:http';
import Provider from 'oidc-provider';

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.PEER_PORT || 0), '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;
const accessTtl = Number(process.env.PEER_ACCESS_TTL || 60);
const secret = process.env.PEER_CLIENT_SECRET || 'peer-secret';

const provider = new Provider(issuer, {
  clients: [
    {
      // "native": loopback redirect URIs match on any port (RFC 8252 §7.3), so the
      // tests can start oauthd on a free port after the provider.
      client_id: 'oauthd',
      client_secret: secret,
      application_type: 'native',
      // The second: oauthd served below a path prefix by a proxy (public_url with a path);
      // the third: the same provider configured a second time, as "direct".
      redirect_uris: ['http://127.0.0.1/callback/peer', 'http://127.0.0.1/oauthd/callback/peer', 'http://127.0.0.1/callback/direct'],
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // examples/express-oauth, which runs its own authorization-code flow.
      client_id: 'express-example',
      client_secret: secret,
      application_type: 'native',
      redirect_uris: ['http://127.0.0.1/callback'],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  clockTolerance: 0,
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  claims: { openid: ['sub'], email: ['email'], profile: ['name'] },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id, email: `${id}@peer.test`, name: id }) }),
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
  },
  ttl: {
    AccessToken: accessTtl,
    AuthorizationCode: 600,
    DeviceCode: Number(process.env.PEER_DEVICE_TTL || 600),
    Grant: 86400,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 86400,
    Session: 86400,
  },
  // Refresh tokens for every grant that asked for offline_access.
  issueRefreshToken: async (ctx, client, code) =>
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
});
provider.proxy = false;

// The reason behind a failed grant is only in the provider's own events: log it for the
// test output, since error bodies say no more than "grant request is invalid".
provider.on('grant.error', (ctx, err) => console.error(`grant.error ${err.name}: ${err.error_detail || err.message}`));
provider.on('server_error', (ctx, err) => console.error(`server_error ${err.stack}`));

// Counters the tests read at GET /_test/stats: grants of each type that succeeded and
// that failed (a failed one is a request that reached the token endpoint), and
// revocation requests answered 200.
const grants = {};
const errors = {};
let revocations = 0;
provider.on('grant.success', (ctx) => {
  const type = ctx.oidc.params.grant_type;
  grants[type] = (grants[type] || 0) + 1;
});
provider.on('grant.error', (ctx) => {
  const type = ctx.oidc.params && ctx.oidc.params.grant_type;
  errors[type] = (errors[type] || 0) + 1;
});

const handle = provider.callback();
server.on('request', (req, res) => {
  if (req.url === '/_test/stats') {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ grants, errors, revocations }));
    return;
  }
  if (req.url.startsWith('/token/revocation')) {
    res.on('finish', () => {
      if (res.statusCode === 200) revocations += 1;
    });
  }
  handle(req, res);
});
console.log(`peer listening on ${issuer}`);
