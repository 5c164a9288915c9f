// A relying party built on openid-client v6 (panva), driven by tests/test_interop_openid_client.py.
//
// Two invocations, JSON in on stdin and JSON out on stdout:
//
//   node rp.mjs authorize   {issuer, client_id, client_secret?, redirect_uri, scope}
//     -> {authorization_url, code_verifier, state, nonce, discovery}
//   node rp.mjs complete    {...the same, code_verifier, state, nonce, callback_url}
//     -> {steps: {name: {ok: true, ...} | {ok: false, error: {...}}}, order: [...]}
//
// "complete" runs the whole life of a grant and reports every step, failed ones included, so that the
// Python test asserts on the outcome of each one: code exchange (ID token validated by openid-client:
// signature against the JWKS, iss, aud, azp, exp, nonce, at_hash), UserInfo, refresh (rotation),
// introspection, revocation of the access token, introspection and UserInfo after revocation, and a
// replay of the rotated refresh token. Without client_secret the client authenticates with "none".
// Exit code 0 whenever a report was written; 2 for a usage or discovery problem (message on stderr).

import * as client from 'openid-client'

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}')
}

function describeError(err) {
  const out = { name: err?.name, message: err?.message }
  for (const key of ['code', 'error', 'error_description', 'status']) {
    if (err?.[key] !== undefined) out[key] = err[key]
  }
  if (err instanceof client.WWWAuthenticateChallengeError && Array.isArray(err.cause)) {
    out.challenges = err.cause.map((c) => ({ scheme: c.scheme, parameters: c.parameters }))
  } else if (err?.cause instanceof Response) {
    out.status ??= err.cause.status
  } else if (err?.cause && typeof err.cause === 'object') {
    try {
      out.cause = JSON.parse(JSON.stringify(err.cause))
    } catch {
      out.cause = String(err.cause)
    }
  }
  return out
}

function decodeJwtPart(jwt, index) {
  return JSON.parse(Buffer.from(jwt.split('.')[index], 'base64url').toString('utf8'))
}

async function configure(input) {
  const auth = input.client_secret ? client.ClientSecretBasic(input.client_secret) : client.None()
  return client.discovery(new URL(input.issuer), input.client_id, undefined, auth, {
    execute: [client.allowInsecureRequests], // http://localhost: the development-mode issuer
  })
}

async function authorize(input) {
  const config = await configure(input)
  const codeVerifier = client.randomPKCECodeVerifier()
  const state = client.randomState()
  const nonce = client.randomNonce()
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: input.redirect_uri,
    scope: input.scope,
    code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  })
  const meta = config.serverMetadata()
  return {
    authorization_url: url.href,
    code_verifier: codeVerifier,
    state,
    nonce,
    discovery: {
      issuer: meta.issuer,
      authorization_endpoint: meta.authorization_endpoint,
      token_endpoint: meta.token_endpoint,
      userinfo_endpoint: meta.userinfo_endpoint,
      jwks_uri: meta.jwks_uri,
      introspection_endpoint: meta.introspection_endpoint,
      revocation_endpoint: meta.revocation_endpoint,
      code_challenge_methods_supported: meta.code_challenge_methods_supported,
      authorization_response_iss_parameter_supported: meta.authorization_response_iss_parameter_supported,
    },
  }
}

async function complete(input) {
  const config = await configure(input)
  const steps = {}
  const order = []
  async function step(name, fn) {
    order.push(name)
    try {
      steps[name] = { ok: true, ...((await fn()) ?? {}) }
    } catch (err) {
      steps[name] = { ok: false, error: describeError(err) }
    }
    return steps[name]
  }
  const tokenSummary = (tokens) => ({
    token_type: tokens.token_type,
    scope: tokens.scope,
    expires_in: tokens.expires_in,
    has_access_token: typeof tokens.access_token === 'string' && tokens.access_token.length > 0,
    has_refresh_token: typeof tokens.refresh_token === 'string' && tokens.refresh_token.length > 0,
    has_id_token: typeof tokens.id_token === 'string',
    id_token_header: tokens.id_token ? decodeJwtPart(tokens.id_token, 0) : null,
    id_token_claims: tokens.claims() ?? null, // validated by openid-client
    access_token_header: tokens.access_token ? decodeJwtPart(tokens.access_token, 0) : null,
  })

  let first, refreshed
  await step('code_grant', async () => {
    first = await client.authorizationCodeGrant(config, new URL(input.callback_url), {
      pkceCodeVerifier: input.code_verifier,
      expectedState: input.state,
      expectedNonce: input.nonce,
      idTokenExpected: true,
    })
    return tokenSummary(first)
  })
  if (!first) return { steps, order }
  const sub = first.claims()?.sub

  await step('userinfo', async () => ({
    claims: await client.fetchUserInfo(config, first.access_token, sub),
  }))

  if (first.refresh_token) {
    await step('refresh', async () => {
      refreshed = await client.refreshTokenGrant(config, first.refresh_token)
      return {
        ...tokenSummary(refreshed),
        refresh_token_rotated: !!refreshed.refresh_token && refreshed.refresh_token !== first.refresh_token,
        access_token_changed: refreshed.access_token !== first.access_token,
      }
    })
  }
  const current = refreshed ?? first

  await step('userinfo_after_refresh', async () => ({
    claims: await client.fetchUserInfo(config, current.access_token, sub),
  }))
  await step('introspect_access', async () => ({
    response: await client.tokenIntrospection(config, current.access_token, { token_type_hint: 'access_token' }),
  }))
  if (current.refresh_token) {
    await step('introspect_refresh', async () => ({
      response: await client.tokenIntrospection(config, current.refresh_token, { token_type_hint: 'refresh_token' }),
    }))
  }
  await step('revoke_access', async () => {
    await client.tokenRevocation(config, current.access_token, { token_type_hint: 'access_token' })
  })
  await step('introspect_access_after_revocation', async () => ({
    response: await client.tokenIntrospection(config, current.access_token, { token_type_hint: 'access_token' }),
  }))
  await step('userinfo_after_revocation', async () => ({
    claims: await client.fetchUserInfo(config, current.access_token, sub),
  }))
  if (refreshed && first.refresh_token) {
    // The rotated refresh token comes back: it must fail (and, by reuse detection, end the whole grant).
    await step('replay_old_refresh', async () => {
      await client.refreshTokenGrant(config, first.refresh_token)
    })
    if (refreshed.refresh_token) {
      await step('refresh_with_new_after_replay', async () => {
        await client.refreshTokenGrant(config, refreshed.refresh_token)
      })
    }
  }
  return { steps, order }
}

const commands = { authorize, complete }
const command = commands[process.argv[2]]
if (!command) {
  process.stderr.write(`usage: node rp.mjs ${Object.keys(commands).join('|')} < input.json\n`)
  process.exit(2)
}
try {
  const result = await command(await readStdin())
  process.stdout.write(JSON.stringify(result) + '\n')
} catch (err) {
  process.stderr.write(`rp.mjs ${process.argv[2]} failed: ${JSON.stringify(describeError(err))}\n${err?.stack ?? ''}\n`)
  process.exit(2)
}
