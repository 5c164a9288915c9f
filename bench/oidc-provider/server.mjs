// Reference server for `make bench`: panva's oidc-provider (v9) configured like our IdP.
//
// Usage: node server.mjs PORT CLIENT_SECRET
// Equivalences with the IdP under test (see bench/README.md):
//   - confidential client "bench" (client_secret_basic), grants authorization_code, refresh_token,
//     client_credentials; PKCE S256 required; refresh tokens rotated on every use;
//   - JWT (RS256) access tokens through a resource indicator (the only way oidc-provider issues JWT
//     access tokens); lifetimes: access 600 s, ID token 3600 s, refresh 30 days, code 600 s (the
//     bench raises our code lifetime to 600 s too, so pre-minted codes stay valid);
//   - client "bench-opaque": same, without the resource, so its access tokens are opaque — oidc-provider
//     only accepts those at userinfo and introspection (it rejects JWT access tokens there by design);
//   - storage in memory (MapAdapter below): no database round trip, which favours oidc-provider;
//   - interactions (login + consent) finish at once for the single bench customer, so a scripted HTTP
//     client can mint authorization codes; no password check, which is measured on our side only.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 3000);
const secret = process.argv[3] || 'bench-secret-bench-secret-bench-secret';
const issuer = `http://localhost:${port}`;
const RESOURCE = 'urn:bench:api';
const redirect = 'http://localhost:9/cb';

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-rs256', use: 'sig', alg: 'RS256' };

const claims = {
  openid: ['sub'],
  profile: ['name', 'given_name', 'family_name', 'updated_at'],
  email: ['email', 'email_verified'],
};

const client = (id) => ({
  client_id: id,
  client_secret: secret,
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
  response_types: ['code'],
  redirect_uris: [redirect],
  scope: 'openid profile email offline_access api',
});

// oidc-provider's quick-start MemoryAdapter is an LRU of 1,000 entries: pre-minted codes would be evicted.
// This one keeps everything in a Map until it expires (still no database round trip).
const stores = new Map();
class MapAdapter {
  constructor(name) {
    this.m = stores.get(name) || new Map();
    stores.set(name, this.m);
    this.grants = stores.get('grant:index') || new Map();
    stores.set('grant:index', this.grants);
    this.uids = stores.get(`${name}:uid`) || new Map();
    stores.set(`${name}:uid`, this.uids);
  }

  async upsert(id, payload, expiresIn) {
    this.m.set(id, { payload, exp: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
    if (payload.grantId) {
      const ids = this.grants.get(payload.grantId) || [];
      ids.push([this, id]);
      this.grants.set(payload.grantId, ids);
    }
    if (payload.uid) this.uids.set(payload.uid, id);
  }

  async find(id) {
    const e = this.m.get(id);
    if (!e) return undefined;
    if (e.exp < Date.now()) { this.m.delete(id); return undefined; }
    return e.payload;
  }

  async findByUid(uid) { const id = this.uids.get(uid); return id ? this.find(id) : undefined; }

  async findByUserCode() { return undefined; }

  async consume(id) { const e = this.m.get(id); if (e) e.payload.consumed = Math.floor(Date.now() / 1000); }

  async destroy(id) { this.m.delete(id); }

  async revokeByGrantId(grantId) {
    for (const [adapter, id] of this.grants.get(grantId) || []) adapter.m.delete(id);
    this.grants.delete(grantId);
  }
}

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients: [client('bench'), client('bench-opaque')],
  jwks: { keys: [jwk] },
  claims,
  scopes: ['openid', 'offline_access', 'api'],
  pkce: { required: () => true },
  ttl: {
    AccessToken: 600,
    ClientCredentials: 600,
    IdToken: 3600,
    RefreshToken: 30 * 86400,
    AuthorizationCode: 600,
    Grant: 30 * 86400,
    Session: 14 * 86400,
    Interaction: 1800,
  },
  rotateRefreshToken: true,
  // Like our IdP: offline_access consented once gives a refresh token (oidc-provider would otherwise
  // also demand prompt=consent on every authorization request).
  issueRefreshToken: async (ctx, c) => c.grantTypeAllowed('refresh_token'),
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({
      sub, name: 'Bench Customer', given_name: 'Bench', family_name: 'Customer', updated_at: 1700000000,
      email: 'bench@example.com', email_verified: true,
    }),
  }),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, c) => (c?.clientId === 'bench' ? RESOURCE : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: RESOURCE,
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: [secret] },
});
provider.proxy = false;

// The scripted interaction: sign the bench customer in and grant everything asked, then resume.
provider.use(async (ctx, next) => {
  const m = /^\/interaction\/([^/]+)$/.exec(ctx.path);
  if (!m || ctx.method !== 'GET') return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const result = {};
  if (details.prompt.name === 'login') {
    result.login = { accountId: 'bench-customer' };
  } else {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const { missingOIDCScope, missingResourceScopes } = details.prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    for (const [indicator, scopes] of Object.entries(missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result.consent = { grantId: await grant.save() };
  }
  const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  ctx.status = 303;
  ctx.redirect(to);
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ${issuer} ready`);
});
