// The API as the dashboard uses it: the caller's token on every request, JSON in and out,
// and a 401 turned into `Unauthorized` so the page can send the user back to sign-in.

const KEY = "orrery.token";

/** The token lost its validity (expired, revoked secret): sign in again. */
export class Unauthorized extends Error {}

/** The token of this tab (sessionStorage: gone when the tab closes). */
export const session = {
  token: sessionStorage.getItem(KEY),
  set(token) {
    this.token = token;
    if (token) sessionStorage.setItem(KEY, token);
    else sessionStorage.removeItem(KEY);
  },
};

/** Calls the API; resolves to the parsed body, rejects with the server's message. */
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const h = { ...headers };
  if (session.token) h.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) h["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json().catch(() => null) : await res.text();
  if (res.status === 401) throw new Unauthorized(data?.message || "please sign in again");
  if (!res.ok) {
    const err = new Error(data?.message || `${res.status} ${res.statusText}`);
    err.status = res.status;
    err.body = data;
    throw err;
  }
  return data;
}

/** Trades a sign-in link's token for a session token. */
export async function exchangeLogin(loginToken) {
  const res = await fetch("/api/v1/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ login_token: loginToken }),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.message || "the sign-in link did not work");
  return data.token;
}

/**
 * A topology's live stream: snapshot, then every event, resumed after any drop with the
 * last event id (a fresh single-use ticket each time, since EventSource cannot send
 * headers). `on.state` hears "connecting", "live", "reconnecting" and "resyncing".
 */
export class LiveTopology {
  constructor(tid, on) {
    this.tid = tid;
    this.on = on;
    this.lastId = null;
    this.es = null;
    this.closed = false;
    this.retry = null;
  }

  async open(state = "connecting") {
    if (this.closed) return;
    this.on.state(state);
    let ticket;
    try {
      ({ ticket } = await api("/api/v1/auth/sse-ticket", { method: "POST" }));
    } catch (e) {
      if (e instanceof Unauthorized) return this.on.expired(e.message);
      return this.later();
    }
    if (this.closed) return;
    let url = `/topologies/${encodeURIComponent(this.tid)}/events?ticket=${encodeURIComponent(ticket)}`;
    if (this.lastId) url += `&last_event_id=${encodeURIComponent(this.lastId)}`;
    const es = new EventSource(url);
    this.es = es;
    const track = (e) => { if (e.lastEventId) this.lastId = e.lastEventId; };
    es.addEventListener("snapshot", (e) => {
      track(e);
      this.on.state("live");
      this.on.snapshot(JSON.parse(e.data));
    });
    for (const name of ["status", "mutation.enqueued", "mutation.applying", "mutation.applied",
      "mutation.failed"]) {
      es.addEventListener(name, (e) => {
        track(e);
        this.on.event(name, JSON.parse(e.data), e.lastEventId);
      });
    }
    es.addEventListener("resync", (e) => {
      const id = JSON.parse(e.data || "{}").last_event_id;
      if (id) this.lastId = id;
      this.drop();
      this.open("resyncing");
    });
    es.addEventListener("expired", () => {
      this.close();
      this.on.expired("your session has expired");
    });
    // The ticket is spent: reconnect ourselves with a new one rather than let the browser
    // retry the same URL.
    es.onerror = () => { this.drop(); this.later(); };
  }

  later() {
    if (this.closed || this.retry) return;
    this.on.state("reconnecting");
    this.retry = setTimeout(() => { this.retry = null; this.open("reconnecting"); },
      1000 + Math.random() * 2000);
  }

  drop() {
    if (this.es) { this.es.close(); this.es = null; }
  }

  close() {
    this.closed = true;
    clearTimeout(this.retry);
    this.drop();
  }
}
