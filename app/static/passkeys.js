/* Passkeys (WebAuthn Level 3) for the sign-in, sign-up and account pages.
 *
 * Every page part is a container with data-passkeys="signin|signup|manage" and
 * its endpoints, CSRF token and messages in data attributes; no inline script.
 * The server speaks WebAuthn JSON (base64url); the helpers below convert.
 * The Signal API (signalUnknownCredential, signalAllAcceptedCredentials,
 * signalCurrentUserDetails) is used only where the browser has it.
 */
(function () {
  "use strict";
  if (window.__idpPasskeys) return; // the partials may each include this file
  window.__idpPasskeys = true;

  // -- base64url --------------------------------------------------------------------------------------------------
  function toB64url(buffer) {
    var bytes = new Uint8Array(buffer), s = "";
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function fromB64url(text) {
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out.buffer;
  }

  // -- options from JSON, credentials to JSON ---------------------------------------------------------------------
  function creationOptions(json) {
    var o = Object.assign({}, json);
    o.challenge = fromB64url(json.challenge);
    o.user = Object.assign({}, json.user, { id: fromB64url(json.user.id) });
    o.excludeCredentials = (json.excludeCredentials || []).map(function (c) {
      return Object.assign({}, c, { id: fromB64url(c.id) });
    });
    return o;
  }
  function requestOptions(json) {
    var o = Object.assign({}, json);
    o.challenge = fromB64url(json.challenge);
    o.allowCredentials = (json.allowCredentials || []).map(function (c) {
      return Object.assign({}, c, { id: fromB64url(c.id) });
    });
    return o;
  }
  function credentialJSON(cred) {
    var r = cred.response, response = { clientDataJSON: toB64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = toB64url(r.attestationObject);
      response.transports = typeof r.getTransports === "function" ? r.getTransports() : [];
    } else {
      response.authenticatorData = toB64url(r.authenticatorData);
      response.signature = toB64url(r.signature);
      if (r.userHandle) response.userHandle = toB64url(r.userHandle);
    }
    return {
      id: cred.id, rawId: toB64url(cred.rawId), type: cred.type, response: response,
      authenticatorAttachment: cred.authenticatorAttachment || null,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {}
    };
  }

  // -- requests ---------------------------------------------------------------------------------------------------
  function post(box, url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": box.dataset.csrf, "Accept": "application/json" },
      body: JSON.stringify(body)
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (!resp.ok) { var e = new Error(data.message || box.dataset.msgFailed); e.server = data; throw e; }
        return data;
      });
    });
  }
  function say(box, text, isError) {
    var status = box.querySelector(".passkey-status");
    if (!status) return;
    status.textContent = text || "";
    status.classList.toggle("error", !!isError);
  }
  function supported() {
    return !!(window.PublicKeyCredential && navigator.credentials && window.isSecureContext);
  }
  function cancelledByUser(err) {
    return err && (err.name === "NotAllowedError" || err.name === "AbortError");
  }

  // -- Signal API (WebAuthn Level 3 §5.1.10), feature-detected ----------------------------------------------------
  function signal(name, arg) {
    var PKC = window.PublicKeyCredential;
    if (PKC && typeof PKC[name] === "function") {
      try { PKC[name](arg).catch(function () {}); } catch (e) { /* not fatal */ }
    }
  }

  // A ceremony's failure: report a cancellation to the server (spends the challenge), show its message.
  function failed(box, err, challenge, verifyUrl, quietAbort) {
    if (cancelledByUser(err)) {
      if (quietAbort && err.name === "AbortError") return;
      return post(box, verifyUrl, { cancelled: true, challenge: challenge, interaction: box.dataset.interaction })
        .catch(function (e) { say(box, e.message || box.dataset.msgCancelled, true); });
    }
    var data = err && err.server;
    if (data && data.error === "unknown_credential" && data.credential_id) {
      signal("signalUnknownCredential", { rpId: data.rp_id, credentialId: data.credential_id });
    }
    if (data && data.redirect && data.error === "reauthentication_required") {
      say(box, err.message, true);
      window.setTimeout(function () { window.location.assign(data.redirect); }, 1500);
      return;
    }
    say(box, (err && err.message) || box.dataset.msgFailed, true);
  }

  // -- sign in (button and autofill) ------------------------------------------------------------------------------
  function initSignin(box) {
    var button = box.querySelector("[data-passkey-signin]");
    var conditional = null; // AbortController of the pending autofill request

    function run(mediation) {
      var controller = new AbortController(), challenge = null;
      if (mediation === "conditional") conditional = controller;
      return post(box, box.dataset.optionsUrl, { interaction: box.dataset.interaction }).then(function (options) {
        challenge = options.challenge;
        var request = { publicKey: requestOptions(options), signal: controller.signal };
        if (mediation) request.mediation = mediation;
        return navigator.credentials.get(request);
      }).then(function (cred) {
        if (!cred) throw new DOMException("no credential", "NotAllowedError");
        say(box, "");
        return post(box, box.dataset.verifyUrl, { credential: credentialJSON(cred), interaction: box.dataset.interaction });
      }).then(function (result) {
        window.location.assign(result.redirect);
      }).catch(function (err) {
        failed(box, err, challenge, box.dataset.verifyUrl, mediation === "conditional");
      });
    }

    if (button) {
      button.addEventListener("click", function () {
        if (!supported()) { say(box, box.dataset.msgUnsupported, true); return; }
        if (conditional) { conditional.abort(); conditional = null; }
        run(null);
      });
    }
    // Autofill: the email field offers the customer's passkeys (conditional mediation).
    var email = document.querySelector('input[name="email"]');
    if (email && supported() && typeof PublicKeyCredential.isConditionalMediationAvailable === "function") {
      email.setAttribute("autocomplete", "username webauthn");
      PublicKeyCredential.isConditionalMediationAvailable().then(function (ok) {
        if (ok) run("conditional");
      }).catch(function () {});
    }
  }

  // -- sign up with a passkey only --------------------------------------------------------------------------------
  function initSignup(box) {
    var button = box.querySelector("[data-passkey-signup]");
    if (!button) return;
    button.addEventListener("click", function () {
      if (!supported()) { say(box, box.dataset.msgUnsupported, true); return; }
      var email = document.querySelector('input[name="email"]'), name = document.querySelector('input[name="name"]');
      if (!email || !email.value) { say(box, box.dataset.msgEmail, true); if (email) email.focus(); return; }
      var challenge = null;
      post(box, box.dataset.optionsUrl, {
        email: email.value, name: name ? name.value : "", interaction: box.dataset.interaction
      }).then(function (options) {
        challenge = options.challenge;
        return navigator.credentials.create({ publicKey: creationOptions(options) });
      }).then(function (cred) {
        return post(box, box.dataset.verifyUrl, { credential: credentialJSON(cred), interaction: box.dataset.interaction });
      }).then(function (result) {
        window.location.assign(result.redirect);
      }).catch(function (err) { failed(box, err, challenge, box.dataset.verifyUrl, false); });
    });
  }

  // -- account centre ---------------------------------------------------------------------------------------------
  function initManage(box) {
    var ids = [];
    try { ids = JSON.parse(box.dataset.credentialIds || "[]"); } catch (e) { ids = []; }
    // Tell the passkey provider which credentials still work here (it hides deleted ones).
    signal("signalAllAcceptedCredentials", { rpId: box.dataset.rpId, userId: box.dataset.userId, allAcceptedCredentialIds: ids });
    if (box.dataset.renamed) {
      signal("signalCurrentUserDetails", {
        rpId: box.dataset.rpId, userId: box.dataset.userId, name: box.dataset.userName, displayName: box.dataset.displayName
      });
    }
    var button = box.querySelector("[data-passkey-add]");
    if (!button) return;
    button.addEventListener("click", function () {
      if (!supported()) { say(box, box.dataset.msgUnsupported, true); return; }
      var challenge = null;
      post(box, box.dataset.optionsUrl, {}).then(function (options) {
        challenge = options.challenge;
        return navigator.credentials.create({ publicKey: creationOptions(options) });
      }).then(function (cred) {
        return post(box, box.dataset.verifyUrl, { credential: credentialJSON(cred) });
      }).then(function (result) {
        say(box, box.dataset.msgAdded);
        window.location.assign(result.redirect);
      }).catch(function (err) { failed(box, err, challenge, box.dataset.verifyUrl, false); });
    });
  }

  function init() {
    var kinds = { signin: initSignin, signup: initSignup, manage: initManage };
    document.querySelectorAll("[data-passkeys]").forEach(function (box) {
      var fn = kinds[box.dataset.passkeys];
      if (fn) fn(box);
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
