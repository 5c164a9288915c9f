// A device (TV, console) built on openid-client v6 (panva), driven by tests/test_device_interop.py.
//
//   node device.mjs  < {issuer, client_id, client_secret?, scope}
//
// Writes two JSON lines on stdout: first the device authorization response (so the test's browser can
// enter the user code), then, once pollDeviceAuthorizationGrant returns (it waits `interval` seconds
// between polls and handles authorization_pending and slow_down itself), a report of the grant:
// the tokens (ID token validated by openid-client: signature against the JWKS, iss, aud, exp, iat),
// UserInfo with the access token, and a second redemption of the same device code (must fail).
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
  return out
}

const decode = (jwt, i) => JSON.parse(Buffer.from(jwt.split('.')[i], 'base64url').toString('utf8'))

const input = await readStdin()
let config
try {
  const auth = input.client_secret ? client.ClientSecretBasic(input.client_secret) : client.None()
  config = await client.discovery(new URL(input.issuer), input.client_id, undefined, auth, {
    execute: [client.allowInsecureRequests], // http://localhost: the development-mode issuer
  })
} catch (err) {
  process.stderr.write(`discovery failed: ${JSON.stringify(describeError(err))}\n`)
  process.exit(2)
}

const report = { steps: {} }
try {
  const started = Date.now()
  const response = await client.initiateDeviceAuthorization(config, { scope: input.scope })
  process.stdout.write(JSON.stringify({
    device_authorization: response,
    device_authorization_endpoint: config.serverMetadata().device_authorization_endpoint,
  }) + '\n')

  const tokens = await client.pollDeviceAuthorizationGrant(config, response)
  report.steps.poll = {
    ok: true,
    seconds: (Date.now() - started) / 1000,
    token_type: tokens.token_type,
    scope: tokens.scope,
    expires_in: tokens.expires_in,
    has_refresh_token: typeof tokens.refresh_token === 'string',
    access_token_header: decode(tokens.access_token, 0),
    id_token_claims: tokens.claims() ?? null, // validated by openid-client
  }
  try {
    report.steps.userinfo = { ok: true, claims: await client.fetchUserInfo(config, tokens.access_token, tokens.claims().sub) }
  } catch (err) {
    report.steps.userinfo = { ok: false, error: describeError(err) }
  }
  try {
    await client.pollDeviceAuthorizationGrant(config, { ...response, interval: 1 })
    report.steps.replay = { ok: true }
  } catch (err) {
    report.steps.replay = { ok: false, error: describeError(err) }
  }
} catch (err) {
  report.steps.poll ??= { ok: false, error: describeError(err) }
}
process.stdout.write(JSON.stringify(report) + '\n')
