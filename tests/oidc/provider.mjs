// A real, certified OpenID provider (the `oidc-provider` package) for Orrery's tests.
//
// Usage: node provider.mjs <oidc-provider entry (lib/index.js)> <config.json>
// config.json: { "port": n, "issuer": "http://127.0.0.1:n", "audience": "...",
//                "clients": [{ "client_id", "client_secret"?, "alg", "claims": {...} }],
//                "dashboard": { "client_id", "redirect_uris": [...] }?,
//                "users": { "<login>": { ...claims } } }
//
// Every start makes new signing keys (RS256, ES256, EdDSA, each with a fresh `kid`), so
// restarting it on the same port is a key rotation. Clients with a secret use the
// client_credentials grant and get JWT access tokens for `audience`, signed with their
// `alg` and carrying their `claims`; the dashboard client is a public one (authorization
// code with PKCE) whose users sign in through the provider's own login pages, and whose
// access tokens carry the user's claims. Prints `listening <issuer>` once it serves.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const [entry, configPath] = process.argv.slice(2);
const { default: Provider } = await import(pathToFileURL(entry).href);
const config = JSON.parse(readFileSync(configPath, 'utf8'));

function key(alg, type, options) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid: `${alg}-${randomUUID()}` };
}
const keys = [
  key('RS256', 'rsa', { modulusLength: 2048 }),
  key('ES256', 'ec', { namedCurve: 'P-256' }),
  key('EdDSA', 'ed25519', {}),
];

const byClient = new Map(config.clients.map((c) => [c.client_id, c]));
const clients = config.clients.map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_post',
}));
if (config.dashboard) {
  clients.push({
    client_id: config.dashboard.client_id,
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: config.dashboard.redirect_uris,
    post_logout_redirect_uris: config.dashboard.redirect_uris,
    id_token_signed_response_alg: config.dashboard.alg || 'RS256',
  });
}

const provider = new Provider(config.issuer, {
  clients,
  jwks: { keys },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => {
        if (resource !== config.audience) throw new Error(`unknown resource ${resource}`);
        const alg = byClient.get(client.clientId)?.alg || (config.dashboard && config.dashboard.alg) || 'RS256';
        return {
          scope: 'openid orrery',
          audience: config.audience,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg } },
        };
      },
    },
  },
  scopes: ['openid', 'orrery'],
  // Signing in is consent enough: these are the operator's own users and dashboard.
  loadExistingGrant: async (ctx) => {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid orrery');
    grant.addResourceScope(config.audience, 'openid orrery');
    await grant.save();
    return grant;
  },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id }),
  }),
  extraTokenClaims: async (ctx, token) => {
    if (token.kind === 'ClientCredentials') return byClient.get(token.clientId)?.claims;
    if (token.accountId) return (config.users || {})[token.accountId];
    return undefined;
  },
});
provider.proxy = false;

provider.listen(config.port, '127.0.0.1', () => {
  console.log(`listening ${config.issuer}`);
});
