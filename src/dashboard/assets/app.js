// The dashboard's shell: sign-in (the operator's identity provider, a pasted token or a
// single-use link), the navigation and the hash router. What a view may offer follows the
// role `whoami` reports.

import { api, exchangeLogin, session, Unauthorized } from "./api.js";
import { beginSignIn, finishSignIn, providerSignOut, signInOptions } from "./oidc.js";
import * as views from "./views.js";

const ROLES = ["viewer", "operator", "admin"];
const $ = (id) => document.getElementById(id);

let stopView = () => {};
let ctx = null;

function showSignIn(why = "") {
  stopView();
  stopView = () => {};
  session.set(null);
  $("top").hidden = true;
  $("main").replaceChildren();
  $("signin").hidden = false;
  $("signin-why").textContent = why;
  document.title = "Orrery — sign in";
  signInOptions().then((o) => {
    $("signin-oidc").hidden = !o.oidc;
    if (o.oidc) $("signin-oidc").textContent = `Sign in with ${new URL(o.oidc.issuer).host}`;
    $("signin-form").hidden = !o.token;
    $("signin-hint").hidden = !o.token;
  }).catch((e) => { $("signin-why").textContent = `${why} (${e.message})`.trim(); });
}

/** Signed in, but refused by Orrery (no role): say so, and offer to sign out. */
function showRefused(message) {
  showSignIn();
  document.title = "Orrery — no access";
  $("signin-why").textContent = `You are signed in, but ${message}. Ask an Orrery admin to grant your account a role.`;
  $("signin").dataset.refused = "true";
}

function route() {
  if (!ctx) return;
  const [view = "overview", arg] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  stopView();
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === view);
  }
  const main = $("main");
  main.dataset.view = view;
  document.title = `Orrery — ${view}`;
  if (view === "topologies" && arg) stopView = views.topology(main, ctx, arg);
  else if (views[view] && view !== "h" && view !== "topology") stopView = views[view](main, ctx);
  else stopView = views.overview(main, ctx);
}

async function start() {
  let who;
  try {
    who = await api("/api/v1/auth/whoami");
  } catch (e) {
    if (e instanceof Unauthorized) return showSignIn(session.token ? e.message : "");
    if (e.status === 403) {
      const token = session.token;
      showRefused(e.message.replace(/^the identity provider grants this user/, "the identity provider grants you"));
      // Keep the token until sign-out, which may need the provider's session.
      session.set(token);
      return;
    }
    $("main").textContent = `Orrery does not answer: ${e.message}`;
    return;
  }
  delete $("signin").dataset.refused;
  const level = ROLES.indexOf(who.role);
  ctx = {
    role: who.role,
    can: (role) => level >= ROLES.indexOf(role),
    expired: (msg) => { ctx = null; showSignIn(msg || "your session has expired"); },
  };
  $("signin").hidden = true;
  $("top").hidden = false;
  const scope = [...(who.projects || []), ...(who.topologies || [])];
  $("who").textContent = who.auth ? `${who.sub} · ${who.role}` : "authentication off · admin";
  if (scope.length) $("who").title = `limited to: ${scope.join(", ")}`;
  $("signout").hidden = !who.auth;
  document.body.dataset.role = who.role;
  if (!location.hash || location.hash === "#") location.hash = "#/overview";
  route();
}

window.addEventListener("hashchange", route);

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  session.set($("token").value.trim());
  $("token").value = "";
  start();
});

async function signOut() {
  ctx = null;
  session.set(null);
  if (await providerSignOut()) return;
  showSignIn("signed out");
}

$("signout").addEventListener("click", signOut);
$("signin-signout").addEventListener("click", signOut);
$("signin-oidc").addEventListener("click", () => {
  beginSignIn().catch((e) => { $("signin-why").textContent = e.message; });
});

(async () => {
  try {
    const token = await finishSignIn();
    if (token) session.set(token);
  } catch (e) {
    return showSignIn(e.message);
  }
  const login = new URLSearchParams(location.hash.slice(1)).get("login");
  if (login) {
    // The link is single-use: take it out of the address bar and history at once.
    history.replaceState(null, "", `${location.pathname}#/overview`);
    try {
      session.set(await exchangeLogin(login));
    } catch (e) {
      return showSignIn(e.message);
    }
  }
  start();
})();
