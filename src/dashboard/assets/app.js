// The dashboard's shell: sign-in (a pasted token or a single-use link), the navigation and
// the hash router. What a view may offer follows the role `whoami` reports.

import { api, exchangeLogin, session, Unauthorized } from "./api.js";
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
    $("main").textContent = `Orrery does not answer: ${e.message}`;
    return;
  }
  const level = ROLES.indexOf(who.role);
  ctx = {
    role: who.role,
    can: (role) => level >= ROLES.indexOf(role),
    expired: (msg) => { ctx = null; showSignIn(msg || "your session has expired"); },
  };
  $("signin").hidden = true;
  $("top").hidden = false;
  $("who").textContent = who.auth ? `${who.sub} · ${who.role}` : "authentication off · admin";
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

$("signout").addEventListener("click", () => { ctx = null; showSignIn("signed out"); });

(async () => {
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
