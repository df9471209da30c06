// The operator console's script. Plain ES2020, no build step, no dependency. It talks only to this origin's
// /api/v1 routes with the key the operator typed (sessionStorage of this tab; sent as a Bearer header, never
// in a URL). The DOM is built from text nodes: nothing from the API is ever parsed as markup.
"use strict";

(() => {
  const KEY_NAME = "mta-console-key";
  const REFRESH_MS = 5000;
  const TIMEOUT_MS = 10000;
  const $ = (id) => document.getElementById(id);

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");
  const fmtValue = (v) => (typeof v === "number" ? (Math.round(v * 1000) / 1000).toString() : "no evidence");
  const shortTime = (iso) => (typeof iso === "string" && iso.length >= 16 ? iso.slice(11, 16) : "");

  function key() {
    try {
      return sessionStorage.getItem(KEY_NAME) || "";
    } catch (_) {
      return "";
    }
  }

  /** Call the API: `{status, ok, body}`; a network failure or timeout gives status 0. */
  async function api(method, path) {
    const headers = { Accept: "application/json" };
    const k = key();
    if (k) headers.Authorization = "Bearer " + k;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const response = await fetch(path, {
        method, headers, signal: abort.signal, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
      });
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      return { status: response.status, ok: response.ok, body };
    } catch (_) {
      return { status: 0, ok: false, body: null };
    } finally {
      clearTimeout(timer);
    }
  }

  function errorText(result) {
    if (result.status === 0) return "no answer from the server";
    const message = result.body && result.body.error && result.body.error.message;
    return "HTTP " + result.status + (message ? ": " + message : "");
  }

  function setConn(text, isError) {
    const conn = $("conn");
    conn.textContent = text;
    conn.classList.toggle("error", Boolean(isError));
  }

  // ---- health ----
  function renderHealth(h) {
    const state = $("health-state");
    state.textContent = h.state;
    state.className = "state " + h.state;
    $("accepting").textContent = h.accepting ? "accepting new work" : "not accepting new work";
    $("health-reasons").replaceChildren(...(h.reasons || []).map((r) => el("li", {}, r)));
    $("signals").replaceChildren(...(h.signals || []).map((s) => el("tr", {},
      el("td", {}, s.signal),
      el("td", { class: "num" }, fmtValue(s.value), typeof s.value === "number" ? " " + s.unit : ""),
      el("td", {}, el("span", { class: "state " + s.level }, s.level)),
      el("td", { class: "num" }, s.degraded_mark ?? "–"),
      el("td", { class: "num" }, s.shed_mark ?? "–"))));
    const exports = (h.export || []).map((e) => el("li", {},
      e.name, " ", el("span", { class: "state " + e.state }, e.state),
      e.failing_for_secs !== undefined ? " for " + e.failing_for_secs + " s" : "",
      e.last_error ? ": " + e.last_error : ""));
    $("exports").replaceChildren(...(exports.length ? exports : [el("li", { class: "muted" }, "none configured")]));
  }

  // ---- queues ----
  /** One row per destination domain (the API has one per tenant and domain). */
  function byDomain(queues) {
    const rows = new Map();
    for (const q of queues) {
      const row = rows.get(q.domain) || {
        domain: q.domain, tenants: [], ready: 0, scheduled: 0, in_flight: 0, held: 0, suspended: false,
        suspended_reason: null, suspended_until: null,
      };
      if (q.tenant) row.tenants.push(q.tenant);
      row.ready += q.ready;
      row.scheduled += q.scheduled;
      row.in_flight += q.in_flight;
      row.held += q.held;
      row.suspended = row.suspended || Boolean(q.suspended);
      row.suspended_reason = row.suspended_reason || q.suspended_reason || null;
      row.suspended_until = row.suspended_until || q.suspended_until || null;
      rows.set(q.domain, row);
    }
    return [...rows.values()].sort((a, b) => a.domain.localeCompare(b.domain));
  }

  function suspendedText(row) {
    if (!row.suspended) return "";
    const parts = ["yes"];
    if (row.suspended_reason) parts.push(row.suspended_reason);
    if (row.suspended_until) parts.push("until " + row.suspended_until);
    return parts.join(" · ");
  }

  let shownRows = "";

  function renderQueues(summary) {
    const rows = byDomain(summary.queues || []);
    // Redraw only on change: a button under the pointer stays the same element between refreshes.
    const key = JSON.stringify(rows);
    if (key !== shownRows) drawQueues(rows);
    shownRows = key;
    const t = summary.totals || {};
    $("t-queued").textContent = fmt((t.ready || 0) + (t.scheduled || 0) + (t.held || 0) + (t.in_flight || 0));
    $("t-inflight").textContent = fmt(t.in_flight);
    $("t-connections").textContent = fmt(summary.connections);
  }

  function drawQueues(rows) {
    $("queue-rows").replaceChildren(...rows.map((row) => {
      const action = row.suspended
        ? el("button", { type: "button", class: "small resume", "data-test": "resume" }, "Resume")
        : el("button", { type: "button", class: "small suspend", "data-test": "suspend" }, "Suspend");
      action.addEventListener("click", () => act(row.suspended ? "resume" : "suspend", row.domain, action));
      return el("tr", { "data-test": "queue-row", "data-domain": row.domain, class: row.suspended ? "is-suspended" : "" },
        el("td", {}, row.domain),
        el("td", { class: "muted" }, row.tenants.join(", ")),
        el("td", { class: "num" }, fmt(row.ready)),
        el("td", { class: "num" }, fmt(row.scheduled)),
        el("td", { class: "num" }, fmt(row.in_flight)),
        el("td", { class: "num" }, fmt(row.held)),
        el("td", {}, suspendedText(row)),
        el("td", {}, action));
    }));
    $("queue-empty").hidden = rows.length > 0;
  }

  async function act(verb, domain, button) {
    button.disabled = true;
    const result = await api("POST", "/api/v1/queue/" + encodeURIComponent(domain) + "/" + verb);
    if (!result.ok) setConn(verb + " " + domain + " failed: " + errorText(result), true);
    await refresh();
  }

  // ---- time series ----
  const SERIES = [
    ["received", (m) => m.received],
    ["delivered", (m) => m.delivered],
    ["deferred", (m) => m.deferred],
    ["bounced", (m) => m.bounced + m.expired],
  ];

  function renderChart(minutes) {
    const W = 600, H = 200, left = 40, right = 16, top = 8, bottom = 22;
    const max = Math.max(1, ...minutes.flatMap((m) => SERIES.map(([, f]) => f(m))));
    const step = niceStep(max / 4);
    const ymax = Math.ceil(max / step) * step;
    const x = (i) => left + (minutes.length <= 1 ? 0 : (i * (W - left - right)) / (minutes.length - 1));
    const y = (v) => top + (H - top - bottom) * (1 - v / ymax);
    const nodes = [];
    for (let v = 0; v <= ymax; v += step) {
      nodes.push(svg("line", { class: "axis", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
      nodes.push(svg("text", { class: "tick", x: left - 4, y: y(v) + 3, "text-anchor": "end" }, String(v)));
    }
    minutes.forEach((m, i) => {
      if ((minutes.length - 1 - i) % 5 === 0) {
        const anchor = i === minutes.length - 1 ? "end" : "middle";
        nodes.push(svg("text", { class: "tick", x: x(i), y: H - 6, "text-anchor": anchor }, shortTime(m.start)));
      }
    });
    for (const [name, f] of SERIES) {
      const points = minutes.map((m, i) => x(i).toFixed(1) + "," + y(f(m)).toFixed(1)).join(" ");
      nodes.push(svg("polyline", { class: "line s-" + name, points }));
    }
    $("chart").replaceChildren(...nodes);
  }

  function niceStep(raw) {
    const power = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
    for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
    return 10 * power;
  }

  function renderSeries(ts) {
    const minutes = ts.minutes || [];
    renderChart(minutes);
    // The last bucket is the minute in progress: rates are the one before.
    const last = minutes.length >= 2 ? minutes[minutes.length - 2] : null;
    const now = minutes.length >= 1 ? minutes[minutes.length - 1] : null;
    const rate = (id, f) => {
      $(id).replaceChildren(last ? fmt(f(last)) : "–", el("small", {}, now ? " · " + fmt(f(now)) + " now" : ""));
    };
    rate("t-delivered", (m) => m.delivered);
    rate("t-deferred", (m) => m.deferred);
    rate("t-bounced", (m) => m.bounced + m.expired);
    const classes = ts.bounce_classes || [];
    $("bounce-rows").replaceChildren(...classes.map((c) => el("tr", {},
      el("td", { class: "num" }, c.class), el("td", {}, c.name),
      el("td", { class: "num" }, fmt(c.bounced)), el("td", { class: "num" }, fmt(c.deferred)))));
    $("bounce-empty").hidden = classes.length > 0;
  }

  // ---- cluster ----
  function renderCluster(view) {
    const panel = $("cluster-panel");
    panel.hidden = !view || view.redis === "off";
    if (panel.hidden) return;
    const redis = $("cluster-redis");
    redis.textContent = view.redis;
    redis.className = "state " + view.redis;
    $("cluster-rows").replaceChildren(...(view.nodes || []).map((n) => el("tr", {},
      el("td", {}, n.node_id), el("td", {}, el("span", { class: "state " + n.state }, n.state)),
      el("td", { class: "num" }, fmt(n.queued)), el("td", {}, n.last_seen))));
  }

  // ---- message lookup ----
  async function lookUp(id) {
    const out = $("message-status");
    if (!id) {
      out.replaceChildren(el("p", { class: "error" }, "Type a queue id."));
      return;
    }
    out.replaceChildren(el("p", { class: "muted" }, "Looking up…"));
    const result = await api("GET", "/api/v1/messages/" + encodeURIComponent(id));
    if (result.status === 404) {
      out.replaceChildren(el("p", { class: "error" }, "No message " + id + " in the queue (unknown, or finished)."));
      return;
    }
    if (!result.ok || !result.body) {
      out.replaceChildren(el("p", { class: "error" }, "Lookup failed: " + errorText(result)));
      return;
    }
    const m = result.body;
    out.replaceChildren(
      el("p", {}, el("strong", {}, m.id), " from ", m.envelope_sender ? m.envelope_sender : "<>",
        m.received_at ? ", received " + m.received_at : "", m.tenant ? ", tenant " + m.tenant : "",
        ", " + m.priority),
      el("table", { class: "grid compact" },
        el("thead", {}, el("tr", {}, ["recipient", "state", "attempts", "last reply", "class", "next attempt"]
          .map((h) => el("th", {}, h)))),
        el("tbody", {}, (m.recipients || []).map((r) => el("tr", { "data-recipient": r.email },
          el("td", {}, r.email),
          el("td", {}, el("span", { class: "state " + r.state }, r.state)),
          el("td", { class: "num" }, r.attempts),
          el("td", { class: "reply" }, r.last_reply || "–"),
          el("td", { class: "num" }, r.bounce_class ?? "–"),
          el("td", {}, r.next_attempt_at || "–"))))));
  }

  // ---- refresh loop ----
  let timer = null;
  let refreshing = false;

  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    clearTimeout(timer);
    try {
      const [queue, health, series, cluster] = await Promise.all([
        api("GET", "/api/v1/queue"), api("GET", "/api/v1/health"),
        api("GET", "/api/v1/stats/timeseries"), api("GET", "/api/v1/cluster"),
      ]);
      const failed = [queue, health, series, cluster].find((r) => !r.ok);
      if (failed) {
        const hint = failed.status === 401 || failed.status === 403 ? " (check the API key)" : "";
        setConn(errorText(failed) + hint, true);
      } else {
        setConn("updated " + new Date().toLocaleTimeString("en-GB"), false);
      }
      if (queue.ok && queue.body) renderQueues(queue.body);
      if (health.ok && health.body) renderHealth(health.body);
      if (series.ok && series.body) renderSeries(series.body);
      if (cluster.ok) renderCluster(cluster.body);
    } finally {
      refreshing = false;
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  function start() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("api-key");
      try {
        if (input.value) sessionStorage.setItem(KEY_NAME, input.value);
        else sessionStorage.removeItem(KEY_NAME);
      } catch (_) {
        setConn("this browser refuses session storage", true);
      }
      input.value = "";
      input.placeholder = key() ? "key set for this tab" : "no key";
      refresh();
    });
    $("forget-key").addEventListener("click", () => {
      try {
        sessionStorage.removeItem(KEY_NAME);
      } catch (_) {
        // Nothing stored.
      }
      $("api-key").placeholder = "no key";
      setConn("key forgotten", false);
    });
    $("message-form").addEventListener("submit", (event) => {
      event.preventDefault();
      lookUp($("message-id").value.trim());
    });
    // Nothing is asked before a key is given (or Connect is pressed without one, for loopback without keys):
    // a first request answered 401 would only be noise.
    if (key()) {
      $("api-key").placeholder = "key set for this tab";
      refresh();
    } else {
      setConn("type the API key and press Connect", false);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
