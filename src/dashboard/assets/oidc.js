// Signing in with the operator's OpenID provider: the authorization code flow with PKCE
// (RFC 7636) for a public client. The verifier and the state wait in sessionStorage while
// the user is at the provider; the code comes back in the query string, is traded for an
// access token at the provider's token endpoint, and is taken out of the address bar.

const FLOW = "orrery.oidc.flow";
const ID_TOKEN = "orrery.oidc.id_token";

let options = null;

/** How this Orrery lets users sign in: `{auth, token, oidc}` (`GET /api/v1/auth/providers`). */
export async function signInOptions() {
  if (!options) {
    const res = await fetch("/api/v1/auth/providers");
    const data = await res.json().catch(() => null);
    if (!res.ok) throw new Error(data?.message || `${res.status} ${res.statusText}`);
    options = data;
  }
  return options;
}

const b64url = (bytes) =>
  btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const random = (n) => b64url(crypto.getRandomValues(new Uint8Array(n)));
const redirectUri = () => `${location.origin}/`;

/** Sends the user to the provider to sign in. */
export async function beginSignIn() {
  const { oidc } = await signInOptions();
  const verifier = random(32);
  const state = random(16);
  sessionStorage.setItem(FLOW, JSON.stringify({ verifier, state }));
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const url = new URL(oidc.authorization_endpoint);
  const params = {
    response_type: "code",
    client_id: oidc.client_id,
    redirect_uri: redirectUri(),
    scope: oidc.scope,
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  };
  if (oidc.resource) params.resource = oidc.resource;
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  location.assign(url.href);
}

/**
 * Back from the provider: trades the code for a token and returns it; `null` when this page
 * load is no return from the provider. Throws with a message for the sign-in page.
 */
export async function finishSignIn() {
  const q = new URLSearchParams(location.search);
  if (!q.has("code") && !q.has("error")) return null;
  // The code is single-use and the state is spent: take both out of the address bar.
  history.replaceState(null, "", `${location.pathname}#/overview`);
  const flow = JSON.parse(sessionStorage.getItem(FLOW) || "null");
  sessionStorage.removeItem(FLOW);
  if (q.has("error")) {
    throw new Error(`the identity provider refused: ${q.get("error_description") || q.get("error")}`);
  }
  if (!flow || flow.state !== q.get("state")) {
    throw new Error("this sign-in was not started from this tab; please sign in again");
  }
  const { oidc } = await signInOptions();
  const body = new URLSearchParams({
    grant_type: "authorization_code",
    code: q.get("code"),
    redirect_uri: redirectUri(),
    client_id: oidc.client_id,
    code_verifier: flow.verifier,
  });
  if (oidc.resource) body.set("resource", oidc.resource);
  const res = await fetch(oidc.token_endpoint, { method: "POST", body });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    throw new Error(`the identity provider issued no token: ${data.error_description || data.error || res.status}`);
  }
  if (data.id_token) sessionStorage.setItem(ID_TOKEN, data.id_token);
  // An access token for Orrery when the provider issues JWTs for it; else the ID token.
  const isJwt = (t) => typeof t === "string" && t.split(".").length === 3;
  const token = isJwt(data.access_token) ? data.access_token : data.id_token;
  if (!token) throw new Error("the identity provider's answer holds no usable token");
  return token;
}

/**
 * Signs out at the provider too, when the user signed in there and it has an end-session
 * endpoint: returns true while the browser is on its way there.
 */
export async function providerSignOut() {
  const idToken = sessionStorage.getItem(ID_TOKEN);
  sessionStorage.removeItem(ID_TOKEN);
  if (!idToken) return false;
  const { oidc } = await signInOptions().catch(() => ({}));
  if (!oidc?.end_session_endpoint) return false;
  const url = new URL(oidc.end_session_endpoint);
  url.searchParams.set("id_token_hint", idToken);
  url.searchParams.set("client_id", oidc.client_id);
  url.searchParams.set("post_logout_redirect_uri", redirectUri());
  location.assign(url.href);
  return true;
}
