// The dashboard's views. Each takes the element to fill and the context (`ctx.can(role)`,
// `ctx.expired(msg)`) and returns a function that stops its timers and streams. Every value
// from the API goes into the page as text (`h()` never parses HTML).

import uPlot from "./vendor/uplot.esm.js";
import { api, LiveTopology, Unauthorized } from "./api.js";

/** Builds an element: `h("td", {class: "num"}, "42")`; `on*` props become listeners. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const badge = (word, cls = word) => h("span", { class: `badge ${cls}` }, word);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const ago = (iso) => {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - new Date(iso)) / 1000));
  return s < 90 ? `${s}s ago` : s < 5400 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
};
const bytes = (n) => (n == null ? "—" : n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB`
  : `${Math.round(n / (1 << 20))} MiB`);
const ms = (n) => (n == null ? "—" : n >= 1000 ? `${(n / 1000).toFixed(1)} s` : `${Math.round(n)} ms`);

function table(columns, rows, empty = "nothing yet") {
  if (!rows.length) return h("p", { class: "dim" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map(([label, , cls]) => h("th", { class: cls }, label)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map(([, cell, cls]) => h("td", { class: cls }, cell(r)))))));
}

/** Fills `el` with `render()` now and every `every` ms; errors show in place. */
function refreshing(el, ctx, render, every = 5000) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    try {
      const content = await render();
      if (!stopped) el.replaceChildren(...[content].flat().filter((c) => c != null && c !== false));
    } catch (e) {
      if (e instanceof Unauthorized) return ctx.expired(e.message);
      if (!stopped) el.replaceChildren(h("p", { class: "error" }, `could not load: ${e.message}`));
    }
    if (!stopped) timer = setTimeout(run, every);
  };
  run();
  return () => { stopped = true; clearTimeout(timer); };
}

function card(title, body, cls = "", testid = undefined) {
  return h("section", { class: `card ${cls}`, "data-testid": testid }, h("h2", {}, title), body);
}

// ---------------------------------------------------------------------------- Overview

export function overview(el, ctx) {
  const ready = h("div");
  const fleet = h("div");
  const failures = h("div");
  const dead = h("div");
  el.replaceChildren(h("h1", {}, "Overview"), h("div", { class: "grid" },
    card("Failures", failures),
    card("Fleet health", fleet),
    card("Projections and bus", ready, "wide"),
    ctx.can("admin") ? card("Dead letters", dead, "wide", "dead-letters") : null));
  const stops = [
    refreshing(failures, ctx, async () => {
      const windows = ["15m", "1h", "24h"];
      const counts = await Promise.all(windows.flatMap((w) => [
        api(`/api/v1/results/stats?since=${w}&success=false`),
        api(`/api/v1/results/stats?since=${w}`),
      ]));
      return h("div", { class: "stats", "data-testid": "failure-badge" }, windows.map((w, i) => {
        const failed = counts[2 * i].count;
        const total = counts[2 * i + 1].count;
        const share = total ? failed / total : 0;
        return h("div", {},
          h("div", { class: "label" }, `failed, last ${w}`),
          h("div", { class: `big ${share > 0.1 ? "error" : share > 0 ? "warn" : ""}` }, failed),
          h("div", { class: "dim" }, `of ${total} results`));
      }));
    }),
    refreshing(fleet, ctx, async () => {
      let f;
      try {
        f = await api("/api/v1/health/fleet");
      } catch (e) {
        if (e.status !== 503 || !e.body) throw e;
        f = e.body; // degraded answers 503 with the same body
      }
      return [
        h("div", { class: "stats" },
          h("div", {}, h("div", { class: "label" }, "status"), badge(f.status)),
          h("div", {}, h("div", { class: "label" }, "agents"), h("div", { class: "big" }, f.agents.known)),
          h("div", {}, h("div", { class: "label" }, "stale"), h("div", { class: "big" }, f.agents.stale))),
        f.reasons?.length ? h("ul", { class: "reasons" }, f.reasons.map((r) => h("li", {}, r))) : null,
      ];
    }),
    refreshing(ready, ctx, async () => {
      const res = await fetch("/ready");
      const r = await res.json();
      const bus = !r.reasons.some((x) => x.startsWith("bus:"));
      return [
        h("div", { class: "toolbar" }, badge(r.status, r.status), "bus", badge(bus ? "connected" : "disconnected", bus ? "ok" : "bad")),
        r.reasons.length ? h("ul", { class: "reasons" }, r.reasons.map((x) => h("li", {}, x))) : null,
        table([
          ["stream", (p) => p.stream],
          ["checkpoint", (p) => p.checkpoint, "num"],
          ["stream last", (p) => p.stream_last_seq ?? "—", "num"],
          ["lag", (p) => p.lag ?? "—", "num"],
          ["caught up", (p) => {
            const done = p.stream_last_seq ? Math.min(1, p.checkpoint / p.stream_last_seq) : 1;
            const bar = h("div", { class: "bar" }, h("span"));
            bar.firstChild.style.width = `${(done * 100).toFixed(1)}%`;
            return bar;
          }],
        ], r.projections),
        r.gaps?.length ? h("ul", { class: "reasons" }, r.gaps.map((g) => h("li", {}, g.message))) : null,
      ];
    }),
  ];
  if (ctx.can("admin")) {
    stops.push(refreshing(dead, ctx, async () => {
      const d = await api("/api/v1/dead-letters?limit=20");
      return [
        h("p", { class: "dim" }, `${d.total} in all, newest first`),
        table([
          ["stream", (x) => x.stream],
          ["seq", (x) => x.seq, "num"],
          ["subject", (x) => h("span", { class: "mono" }, x.subject)],
          ["reason", (x) => x.reason],
          ["received", (x) => when(x.received_at)],
        ], d.items, "no dead letters"),
      ];
    }, 10000));
  }
  return () => stops.forEach((s) => s());
}

// -------------------------------------------------------------------------- Topologies

export function topologies(el, ctx) {
  const list = h("div");
  el.replaceChildren(h("h1", {}, "Topologies"), card("All topologies", list));
  return refreshing(list, ctx, async () => {
    const t = await api("/api/v1/topologies?limit=100");
    return table([
      ["id", (x) => h("a", { href: `#/topologies/${encodeURIComponent(x.id)}` }, x.id)],
      ["name", (x) => x.name ?? ""],
      ["status", (x) => badge(x.status ?? "unknown")],
      ["in flight", (x) => x.in_flight, "num"],
      ["updated", (x) => ago(x.updated_at)],
    ], t.items, "no topology has reported yet");
  });
}

export function topology(el, ctx, tid) {
  const title = h("h1", {}, tid);
  const status = h("span", { "data-testid": "status" });
  const live = h("span", { "data-testid": "live-state" }, badge("connecting"));
  const flight = h("div", { "data-testid": "in-flight" });
  const log = h("div", { class: "log", "data-testid": "event-log" });
  const inFlight = new Map();
  const drawFlight = () => flight.replaceChildren(table([
    ["mutation", (m) => h("span", { class: "mono" }, m.mutation_id)],
    ["op", (m) => m.op ?? ""],
    ["state", (m) => badge(m.state)],
    ["actor", (m) => m.actor ?? ""],
  ], [...inFlight.values()], "nothing in flight"));
  const note = (text, cls = "") => log.prepend(h("div", { class: cls }, `${new Date().toLocaleTimeString()}  ${text}`));

  let form = null;
  if (ctx.can("operator")) {
    const op = h("input", { name: "op", required: true, value: "add_decky", size: 14 });
    const spec = h("input", { name: "spec", value: '{"decky":"web-9"}', size: 40, class: "mono" });
    const out = h("span", { class: "dim" });
    form = h("form", {
      class: "inline", "data-testid": "enqueue-form",
      onsubmit: async (e) => {
        e.preventDefault();
        let parsed;
        try { parsed = JSON.parse(spec.value || "{}"); } catch { out.textContent = "spec must be JSON"; return; }
        try {
          const r = await api(`/api/v1/topologies/${encodeURIComponent(tid)}/mutations`,
            { method: "POST", body: { op: op.value, spec: parsed } });
          out.textContent = `enqueued ${r.mutation_id}`;
        } catch (err) {
          if (err instanceof Unauthorized) return ctx.expired(err.message);
          out.textContent = err.message;
        }
      },
    }, h("div", {}, h("label", {}, "op"), op), h("div", {}, h("label", {}, "spec (JSON)"), spec),
    h("button", { type: "submit" }, "Enqueue"), out);
  }
  el.replaceChildren(
    h("div", { class: "toolbar" }, h("a", { href: "#/topologies" }, "← topologies"), title, status, live),
    h("div", { class: "grid" },
      card("In flight", flight),
      form ? card("Enqueue a mutation", form) : null,
      card("Events (newest first)", log, "wide")));
  drawFlight();

  const stream = new LiveTopology(tid, {
    state: (s) => live.replaceChildren(badge(s, s === "live" ? "live" : "reconnecting")),
    expired: (msg) => ctx.expired(msg),
    snapshot: (snap) => {
      title.textContent = snap.name ? `${snap.name} (${tid})` : tid;
      status.replaceChildren(badge(snap.status ?? "unknown"));
      inFlight.clear();
      for (const m of snap.in_flight || []) inFlight.set(m.mutation_id, m);
      drawFlight();
      note(`${snap.reset ? "resynchronised" : "snapshot"} at seq ${snap.seq}`, "dim");
    },
    event: (name, ev) => {
      const p = ev.payload || {};
      if (name === "status") {
        status.replaceChildren(badge(p.status ?? "unknown"));
        note(`status → ${p.status}`);
        return;
      }
      const state = name.split(".")[1];
      const known = inFlight.get(p.mutation_id) || { mutation_id: p.mutation_id };
      const m = { ...known, ...p, state };
      if (state === "enqueued" || state === "applying") inFlight.set(p.mutation_id, m);
      else inFlight.delete(p.mutation_id);
      drawFlight();
      note(`${p.mutation_id} ${state}${p.op ? ` (${p.op})` : ""}${p.error ? `: ${p.error}` : ""}`,
        state === "failed" ? "error" : "");
    },
  });
  stream.open();
  return () => stream.close();
}

// ------------------------------------------------------------------------------- Fleet

/** A line chart of `series` ([label, values]) over `xs` (Unix seconds). */
function chart(el, title, xs, series, fmt) {
  const width = Math.max(300, el.clientWidth || 600);
  const colors = ["#4f7cff", "#f5b841", "#3ccf8e", "#ff5d6c", "#b48cff", "#5ad8e6"];
  const opts = {
    title, width, height: 200,
    series: [{}, ...series.map(([label], i) => ({ label, stroke: colors[i % colors.length], width: 1.5,
      value: (u, v) => (v == null ? "—" : fmt(v)) }))],
    axes: [{ stroke: "#8a96ad", grid: { stroke: "#263049" } },
      { stroke: "#8a96ad", grid: { stroke: "#263049" }, values: (u, vals) => vals.map(fmt), size: 70 }],
  };
  el.replaceChildren();
  return new uPlot(opts, [xs, ...series.map(([, v]) => v)], el);
}

/** Sums or averages samples per timestamp: [[x…], [y…]] for uPlot. */
function perTime(samples, key, reduce = "mean") {
  const at = new Map();
  for (const s of samples) {
    const t = Math.round(new Date(s.at).getTime() / 10000) * 10; // 10 s buckets
    const e = at.get(t) || { sum: 0, n: 0 };
    e.sum += s[key] ?? 0;
    e.n += 1;
    at.set(t, e);
  }
  const xs = [...at.keys()].sort((a, b) => a - b);
  return [xs, xs.map((x) => (reduce === "mean" ? at.get(x).sum / at.get(x).n : at.get(x).sum))];
}

export function fleet(el, ctx) {
  const agents = h("div");
  const durations = h("div");
  const top = h("div");
  const sysCpu = h("div", { class: "chart" });
  const sysMem = h("div", { class: "chart" });
  const wlCpu = h("div", { class: "chart" });
  const wlMem = h("div", { class: "chart" });
  el.replaceChildren(h("h1", {}, "Fleet"), h("div", { class: "grid" },
    card("System CPU, last hour (mean of agents)", sysCpu),
    card("System memory, last hour (sum)", sysMem),
    card("CPU per workload", wlCpu),
    card("Memory per workload", wlMem),
    card("Top consumers now", top),
    card("Scan durations, last 24 h (slowest p95 first)", durations),
    card("Agents", agents, "wide")));
  const charts = [];
  const stops = [
    refreshing(agents, ctx, async () => {
      const a = await api("/api/v1/agents?limit=1000");
      return table([
        ["agent", (x) => h("span", { class: "mono" }, x.agent_id)],
        ["host", (x) => x.hostname ?? ""],
        ["version", (x) => x.version ?? ""],
        ["labels", (x) => Object.entries(x.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ")],
        ["last heartbeat", (x) => ago(x.last_heartbeat)],
        ["", (x) => (x.stale ? badge("stale") : badge("ok"))],
      ], a.items, "no agent has reported yet");
    }, 10000),
    refreshing(durations, ctx, async () => {
      const since = new Date(Date.now() - 86400000).toISOString();
      const d = await api(`/api/v1/results/durations?since=${encodeURIComponent(since)}`);
      return table([
        ["job", (x) => x.job_id],
        ["runs", (x) => x.count, "num"],
        ["p50", (x) => ms(x.p50_ms), "num"],
        ["p95", (x) => ms(x.p95_ms), "num"],
        ["p99", (x) => ms(x.p99_ms), "num"],
        ["max", (x) => ms(x.max_ms), "num"],
      ], d.items.slice(0, 20), "no timed results yet");
    }, 15000),
    refreshing(top, ctx, async () => {
      const [cpu, mem] = await Promise.all([
        api("/api/v1/system/stats/top?by=cpu&limit=5"),
        api("/api/v1/system/stats/top?by=memory&limit=5"),
      ]);
      const cols = [["workload", (x) => x.owner_name ?? ""], ["role", (x) => x.role ?? ""],
        ["CPU", (x) => `${(x.cpu_percent ?? 0).toFixed(1)}%`, "num"], ["memory", (x) => bytes(x.memory_usage), "num"]];
      return [h("p", { class: "dim" }, "by CPU"), table(cols, cpu.items), h("p", { class: "dim" }, "by memory"), table(cols, mem.items)];
    }, 10000),
    refreshing(h("div"), ctx, async () => {
      const hist = await api("/api/v1/system/stats/history?window=1h");
      const samples = Array.isArray(hist) ? hist : hist.items || [];
      const [xs, cpu] = perTime(samples, "cpu_percent", "mean");
      const [, mem] = perTime(samples, "memory_usage", "sum");
      charts.splice(0).forEach((c) => c.destroy());
      charts.push(chart(sysCpu, "", xs, [["CPU %", cpu]], (v) => `${v.toFixed(0)}%`));
      charts.push(chart(sysMem, "", xs, [["memory", mem]], bytes));
      const wl = (await api("/api/v1/workloads?limit=12")).items.map((w) => w.workload_id);
      const per = await Promise.all(wl.map((w) => api(`/api/v1/workloads/${encodeURIComponent(w)}/stats/history?window=1h`)));
      const all = new Set();
      const series = per.map((p) => {
        const pts = Array.isArray(p) ? p : p.items || [];
        const m = new Map(pts.map((s) => [Math.round(new Date(s.at).getTime() / 10000) * 10, s]));
        m.forEach((_, k) => all.add(k));
        return m;
      });
      const wxs = [...all].sort((a, b) => a - b);
      charts.push(chart(wlCpu, "", wxs, wl.map((w, i) => [w, wxs.map((x) => series[i].get(x)?.cpu_percent ?? null)]),
        (v) => `${v.toFixed(0)}%`));
      charts.push(chart(wlMem, "", wxs, wl.map((w, i) => [w, wxs.map((x) => series[i].get(x)?.memory_usage ?? null)]), bytes));
      return [];
    }, 15000),
  ];
  return () => { stops.forEach((s) => s()); charts.forEach((c) => c.destroy()); };
}

// ----------------------------------------------------------------------------- Deploys

export function deploys(el, ctx) {
  const pick = h("select", { "data-testid": "workload" });
  const ledger = h("div");
  const out = h("p", { class: "dim" });
  let current = null;
  let stop = () => {};
  const show = (wid) => {
    stop();
    current = wid;
    stop = refreshing(ledger, ctx, async () => {
      const d = await api(`/api/v1/workloads/${encodeURIComponent(wid)}/deploys?limit=50`);
      const cols = [
        ["deploy", (x) => h("span", { class: "mono" }, x.deploy_id)],
        ["agent", (x) => x.agent_id],
        ["reference", (x) => h("span", { class: "mono", title: x.reference ?? "" }, (x.reference ?? "").replace(/@sha256:(.{12}).*/, "@sha256:$1…"))],
        ["reason", (x) => x.reason],
        ["result", (x) => (x.success ? badge("ok") : badge("failed"))],
        ["error", (x) => (x.error ? h("span", { class: "dim" }, x.error) : "")],
        ["when", (x) => when(x.recorded_at)],
      ];
      if (ctx.can("admin")) {
        cols.push(["", (x) => (x.success && /@[^:]+:./.test(x.reference ?? "")
          ? h("button", { class: "danger", "data-testid": "rollback", onclick: () => rollback(wid, x) }, "Roll back to this")
          : "")]);
      }
      return table(cols, d.items, "no deploy yet");
    }, 10000);
  };
  const rollback = async (wid, x) => {
    if (!window.confirm(`Roll ${wid} back to ${x.reference}?\nThis publishes a deploy command.`)) return;
    try {
      const r = await api(`/api/v1/workloads/${encodeURIComponent(wid)}/rollback`, { method: "POST", body: { deploy_id: x.deploy_id } });
      out.textContent = `rollback requested: command ${r.command_id} (${r.reference})`;
    } catch (e) {
      if (e instanceof Unauthorized) return ctx.expired(e.message);
      out.textContent = `rollback refused: ${e.message}`;
    }
  };
  pick.addEventListener("change", () => show(pick.value));
  el.replaceChildren(h("h1", {}, "Deploys"),
    h("div", { class: "toolbar" }, h("label", {}, "workload"), pick), out, card("Ledger, newest first", ledger));
  (async () => {
    try {
      const w = await api("/api/v1/workloads");
      pick.replaceChildren(...w.items.map((x) => h("option", { value: x.workload_id }, x.workload_id)));
      if (w.items.length) show(current ?? w.items[0].workload_id);
      else ledger.replaceChildren(h("p", { class: "dim" }, "no workload seen yet"));
    } catch (e) {
      if (e instanceof Unauthorized) ctx.expired(e.message);
      else ledger.replaceChildren(h("p", { class: "error" }, e.message));
    }
  })();
  return () => stop();
}

// ------------------------------------------------------------------------------ Alerts

const CLASS_BADGE = { verified: "ok", failed_repair: "bad", manual_gate: "warn", automation_gap: "warn", open: "unknown" };

export function alerts(el, ctx) {
  const project = h("input", { placeholder: "all projects", size: 16, value: sessionStorage.getItem("orrery.project") || "" });
  const recurrence = h("div");
  const dossier = h("div");
  const coverage = h("div");
  const freshness = h("div");
  const beat = h("div");
  const items = h("div");
  const detail = h("div", { "data-testid": "work-item" });
  let selected = null;
  const q = () => (project.value ? `project_id=${encodeURIComponent(project.value)}&` : "");
  el.replaceChildren(h("h1", {}, "Alerts"),
    h("div", { class: "toolbar" }, h("label", {}, "project"), project),
    h("div", { class: "grid" },
      card("Provider freshness", freshness),
      card("Coverage", coverage),
      ctx.can("operator") ? card("Provider heartbeat", beat) : null,
      card("Recurrence groups", recurrence, "wide"),
      card("Work items", h("div", {}, items, detail), "wide", "work-items"),
      card("Dossier (newest events, redacted)", dossier, "wide")));
  let stops = [];
  const start = () => {
    stops.forEach((s) => s());
    sessionStorage.setItem("orrery.project", project.value);
    stops = [
      refreshing(freshness, ctx, async () => {
        const f = await api(`/api/v1/alerts/freshness?${q()}`);
        const rows = Array.isArray(f) ? f : f.providers || f.items || [];
        return table([["provider", (x) => x.provider], ["last event", (x) => ago(x.last_event_at)],
          ["", (x) => (x.stale ? badge("stale") : x.last_event_at ? badge("ok") : badge("unknown"))]], rows);
      }, 10000),
      refreshing(coverage, ctx, async () => {
        const c = await api(`/api/v1/alerts/coverage?${q()}limit=200`);
        const rows = c.providers || c.items || [];
        return table([["provider", (x) => x.provider], ["events", (x) => x.total, "num"],
          ["duplicates", (x) => x.duplicates, "num"], ["redacted", (x) => x.redacted, "num"]], rows);
      }, 10000),
      refreshing(recurrence, ctx, async () => {
        const r = await api(`/api/v1/alerts/recurrence?${q()}limit=50`);
        return [h("p", { class: "dim" }, `${r.summary.recurrent_groups} recurring of ${r.summary.groups} groups`),
          table([
            ["alert", (x) => x.alertname ?? x.recurrence_key],
            ["provider", (x) => x.provider],
            ["severity", (x) => badge(x.severity ?? "—", x.severity === "critical" || x.severity === "error" ? "bad" : "warn")],
            ["where", (x) => [x.namespace, x.target_resource].filter(Boolean).join(" / ")],
            ["occurrences", (x) => x.occurrence_total, "num"],
            ["latest", (x) => ago(x.latest_received_at)],
          ], r.groups, "no alert yet")];
      }, 10000),
      refreshing(items, ctx, async () => {
        const r = await api(`/api/v1/alerts/recurrence?${q()}limit=300`);
        const s = r.summary;
        const open = r.groups.filter((g) => g.work_item);
        return [h("p", { class: "dim" }, `${s.open_work_item_group_total} open: ${s.failed_repair_group_total} failed repair, `
            + `${s.manual_gate_group_total} manual gate, ${s.automation_gap_group_total} automation gap; `
            + `${s.verified_repair_group_total} verified; ${s.linked_run_total} linked runs`),
          table([
            ["work item", (x) => h("span", { class: "mono" }, x.work_item.id)],
            ["alert", (x) => x.alertname ?? x.recurrence_key],
            ["class", (x) => badge(x.work_item.classification, CLASS_BADGE[x.work_item.classification])],
            ["occurrences", (x) => x.occurrence_total, "num"],
            ["runs", (x) => x.linked_run_total, "num"],
            ["latest run", (x) => x.latest_run_state ?? "—"],
            ["", (x) => h("button", { "data-testid": "work-item-open", onclick: () => showItem(x.work_item.id) }, "Plan")],
          ], open, "no recurring alert")];
      }, 10000),
      refreshing(dossier, ctx, async () => {
        const d = await api(`/api/v1/alerts/dossier?${q()}limit=30`);
        return [h("p", { class: "dim" }, `${d.summary.event_count} events, ${d.summary.redacted_total} redacted, ${d.summary.duplicate_total} duplicates`),
          table([
            ["received", (x) => ago(x.received_at)],
            ["provider", (x) => x.provider],
            ["stage", (x) => badge(x.stage ?? "—", x.stage === "resolved" ? "ok" : "warn")],
            ["alert", (x) => x.alertname ?? ""],
            ["content", (x) => h("span", { class: "mono" }, (x.content_redacted ?? "").slice(0, 160))],
            ["", (x) => (x.has_redacted_content ? badge("redacted", "warn") : "")],
          ], d.items, "no alert yet")];
      }, 10000),
    ];
  };
  // One work item: its plan (the preview), what an operator may record, and its history.
  const showItem = async (id, note = "", chosen = "auto") => {
    selected = id;
    const mode = h("select", { "data-testid": "work-item-mode" }, ["auto", "automation", "manual"].map((m) => h("option", { value: m }, m)));
    mode.value = chosen;
    const kind = h("select", { "data-testid": "handoff-kind" }, ["ticket_proposal", "manual_takeover"].map((k) => h("option", { value: k }, k)));
    const out = h("p", { class: "dim", "data-testid": "work-item-out" }, note);
    const render = async () => {
      const [p, hist] = await Promise.all([
        api(`/api/v1/alerts/recurrence/work-item/preview?work_item_id=${id}&mode=${mode.value}`),
        api(`/api/v1/alerts/recurrence/work-item/history?work_item_id=${id}&limit=20`),
      ]);
      if (selected !== id) return;
      const plan = p.plan;
      const record = async (what, body) => {
        try {
          const e = await api(`/api/v1/alerts/recurrence/work-item/${what}`, { method: "POST", body,
            headers: { "Idempotency-Key": `${what}-${id}-${Date.now()}` } });
          await showItem(id, `${e.kind === "handoff" ? "handoff" : "dry-run"} recorded: ${e.entry_id}`
            + (e.kind === "dry_run" ? (e.passed ? " (passed)" : " (did not pass)") : ""), mode.value);
        } catch (err) {
          if (err instanceof Unauthorized) return ctx.expired(err.message);
          out.textContent = `${what} refused: ${err.body?.error ?? ""} ${err.message}`;
        }
      };
      detail.replaceChildren(
        h("h3", {}, `${p.work_item.id} · ${p.work_item.recurrence_key} · `, badge(p.work_item.classification, CLASS_BADGE[p.work_item.classification])),
        h("p", {}, h("strong", {}, plan.action.replaceAll("_", " ")), ` (${plan.resolved_mode}): ${plan.reason}`),
        table([["check", (c) => c.name], ["", (c) => badge(c.ok ? "ok" : "fails", c.ok ? "ok" : "bad")], ["detail", (c) => c.detail]], plan.checks),
        h("p", { class: "dim" }, p.guarantees.join(" · ")),
        ctx.can("operator") ? h("div", { class: "toolbar" },
          h("label", {}, "mode"), mode,
          h("button", { "data-testid": "dry-run", onclick: () => record("dry-run", { work_item_id: id, mode: mode.value }) }, "Dry-run"),
          h("label", {}, "handoff"), kind,
          h("button", { "data-testid": "handoff", onclick: () => record("handoff", { work_item_id: id, mode: mode.value, handoff_kind: kind.value }) }, "Hand off")) : null,
        out,
        h("h3", {}, "History"),
        table([
          ["when", (e) => when(e.recorded_at)],
          ["kind", (e) => (e.kind === "handoff" ? `handoff (${e.handoff_kind})` : "dry-run")],
          ["mode", (e) => e.mode],
          ["result", (e) => badge(e.passed ? "passed" : "failed", e.passed ? "ok" : "bad")],
          ["by", (e) => e.actor],
          ["ticket", (e) => e.ticket?.title ?? ""],
        ], hist.entries, "no dry-run or handoff yet"));
    };
    mode.addEventListener("change", () => render().catch((e) => { out.textContent = e.message; }));
    try {
      await render();
    } catch (e) {
      if (e instanceof Unauthorized) return ctx.expired(e.message);
      detail.replaceChildren(h("p", { class: "error" }, `could not load ${id}: ${e.message}`));
    }
  };
  if (ctx.can("operator")) {
    const proj = h("input", { value: "shop", size: 10 });
    const out = h("span", { class: "dim" });
    beat.append(h("form", { class: "inline", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const r = await api("/api/v1/alerts/provider-heartbeat", { method: "POST",
          body: { project_id: proj.value, providers: ["sentry", "signoz"], reason: "dashboard check" } });
        out.textContent = `sent (${(r.events || r.published || []).length || "ok"})`;
      } catch (err) {
        if (err instanceof Unauthorized) return ctx.expired(err.message);
        out.textContent = err.message;
      }
    } }, h("div", {}, h("label", {}, "project"), proj), h("button", { type: "submit" }, "Send Sentry + SigNoz heartbeat"), out));
  }
  project.addEventListener("change", start);
  start();
  return () => stops.forEach((s) => s());
}
