// The Admin UI of mcp-pool-gateway (issue 12): a client of the REST API, nothing more.
// The bearer token lives in sessionStorage and travels in the Authorization header only.
// Every value from the API is written with textContent: nothing the API says becomes markup.
"use strict";
(() => {
  const TOKEN_KEY = "mcp-pool-admin-token";
  const WINDOW_SECS = 15 * 60;
  // Refresh period of the live pages, seconds: 5, or `?refresh=N` (1-5) for a closer look.
  const REFRESH_SECS = Math.min(5, Math.max(1, Number(new URLSearchParams(location.search).get("refresh")) || 5));
  // The API's ranges (DESIGN §6, pool-traits RANGES); messages as the API words them.
  const RANGES = {
    min_size: [1, 1000, ""], max_size: [1, 1000, ""], size: [1, 1000, ""],
    max_idle_time: [60, 86400, " seconds"], max_lifetime: [60, 86400, " seconds"],
    health_check_threshold: [0, 100, " %"],
  };
  const STRATEGY_WHEN = {
    round_robin: "Use when the server is stateless and its replicas are alike.",
    least_connections: "Use when call durations vary (some tools are slow).",
    sticky: "Use when the server is stateful: each client keeps its own upstream session.",
    weighted: "Use when replicas differ in capacity (endpoint weights).",
    none: "Use when a session must never be shared: a fresh one per request.",
    peak_ewma: "Use when one endpoint can turn slow: traffic goes to the one answering fastest.",
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = Object.assign(document.createElement(tag), props);
    for (const c of children) node.append(c);
    return node;
  };
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let servers = [];
  // What the token may do, from its `role` claim (no token: the gateway runs without auth, and
  // every caller is the operator). Only a hint for the page: the API decides, and answers 403.
  function tokenRole(t) {
    if (!t) return "admin";
    try {
      const part = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))).role || "user";
    } catch { return "user"; }
  }
  const isAdmin = () => tokenRole(token) === "admin";

  // ---- API ----
  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; this.detail = detail; }
  }
  // A 401 (the token expired or was revoked) asks for a new token: over the open dialog when
  // there is one, so that an edit in progress keeps its values (tokenRefused). `probe` is the
  // sign-in's own check of a token, whose 401 is the answer itself.
  async function api(method, path, body, { probe = false } = {}) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = text; }
    if (res.status === 401 && !probe) tokenRefused();
    if (!res.ok) throw new ApiError(res.status, (data && data.detail) || `${res.status} ${res.statusText}`);
    return data;
  }
  // What a form says when its save was refused for the token: the values stay, to save again.
  const notSaved = (e, button) => e.status === 401
    ? `Not saved: the gateway refused the token (${e.detail}). Sign in again, then press ${button} again: your values are kept.`
    : e.detail;

  function toast(message, kind = "ok") {
    const t = $("toast");
    t.textContent = message;
    t.className = `toast ${kind}`;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  // ---- Sign-in ----
  // Takes `candidate` as the token if the API accepts it; else keeps the one before and
  // answers why not.
  async function useToken(candidate) {
    const before = token;
    token = candidate;
    try {
      await api("GET", "/servers", undefined, { probe: true });
    } catch (e) {
      token = before;
      return e.status === 401 ? e.detail : `The gateway answered: ${e.detail}`;
    }
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    document.body.dataset.role = isAdmin() ? "admin" : "user";
    $("role-note").hidden = isAdmin();
    return null;
  }
  async function signIn(candidate) {
    const error = await useToken(candidate);
    if (error) {
      token = "";
      sessionStorage.removeItem(TOKEN_KEY);
      return error;
    }
    $("signin").hidden = true;
    $("app").hidden = false;
    startPolling();
    show("servers");
    return null;
  }
  // Username and password (ADMIN_USERNAME, ADMIN_PASSWORD on the gateway): a token, or why not.
  async function passwordToken(username, password) {
    const res = await fetch("/admin/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ username, password }),
    });
    const data = await res.json().catch(() => ({}));
    if (res.status === 404) return { error: "This gateway has no username and password sign-in (ADMIN_USERNAME, ADMIN_PASSWORD): paste a token." };
    if (!res.ok) return { error: data.detail || `${res.status} ${res.statusText}` };
    return { token: data.access_token };
  }
  // The API refused the token. Nothing open: back to the sign-in page. A dialog open (an edit
  // in progress): a sign-in over it, which leaves the dialog and its values as they are.
  function tokenRefused() {
    sessionStorage.removeItem(TOKEN_KEY);
    const editing = [...document.querySelectorAll("dialog[open]")].some((d) => d.id !== "reauth");
    if (!editing) { signOut("Your token was refused or has expired: sign in again."); return; }
    if ($("reauth").open) return;
    $("ra-error").textContent = "";
    $("ra-token").value = "";
    openDialog($("reauth"));
    $("ra-token").focus();
  }
  function signOut(message) {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    stopPolling();
    for (const d of document.querySelectorAll("dialog[open]")) d.close();
    $("app").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    $("signin-token").value = "";
    $("signin-token").focus();
  }
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const error = await signIn($("signin-token").value.trim());
    if (error) { $("signin-error").textContent = error; $("signin-token").focus(); }
  });
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const minted = await passwordToken($("login-username").value, $("login-password").value);
    $("login-password").value = "";
    if (minted.error) { $("login-error").textContent = minted.error; $("login-password").focus(); return; }
    $("login-error").textContent = "";
    const error = await signIn(minted.token);
    if (error) $("login-error").textContent = error;
  });
  $("signout").addEventListener("click", () => signOut(""));
  // Signing in again over an open dialog (tokenRefused).
  async function signInAgain(candidate, errorField) {
    const error = await useToken(candidate);
    if (error) { $(errorField).textContent = error; return; }
    $("reauth").close();
    // The forms that said "Not saved" can save now.
    for (const e of document.querySelectorAll("dialog[open] .error")) {
      if (e.textContent.startsWith("Not saved:")) e.textContent = "Signed in again: press Save again to save your values.";
    }
    toast("Signed in again: press Save again to save your values");
  }
  $("ra-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await signInAgain($("ra-token").value.trim(), "ra-error");
  });
  $("ra-login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const minted = await passwordToken($("ra-username").value, $("ra-password").value);
    $("ra-password").value = "";
    if (minted.error) { $("ra-login-error").textContent = minted.error; return; }
    $("ra-login-error").textContent = "";
    await signInAgain(minted.token, "ra-login-error");
  });
  $("ra-signout").addEventListener("click", () => signOut(""));

  // ---- Navigation ----
  const pages = ["servers", "health", "metrics"];
  function show(page) {
    for (const p of pages) $(`page-${p}`).hidden = p !== page;
    for (const b of document.querySelectorAll("[data-page]")) {
      if (b.dataset.page === page) b.setAttribute("aria-current", "page"); else b.removeAttribute("aria-current");
    }
    if (page === "servers") loadServers();
    if (page === "health") renderHealth();
    if (page === "metrics") loadMetrics();
  }
  for (const b of document.querySelectorAll("[data-page]")) b.addEventListener("click", () => show(b.dataset.page));

  // ---- Dialogs: native <dialog> (focus kept inside, Esc closes); focus returns to the opener ----
  function openDialog(d, opener) {
    d.opener = opener || document.activeElement;
    d.showModal();
  }
  for (const d of document.querySelectorAll("dialog")) {
    d.addEventListener("close", () => { if (d.opener && d.opener.isConnected) d.opener.focus(); d.dispatchEvent(new Event("closed")); });
    for (const b of d.querySelectorAll("[data-close]")) b.addEventListener("click", () => d.close());
  }

  // ---- Servers ----
  const serverName = (s) => s.name || s.id;
  const serverEnabled = (s) => s.enabled !== false;
  async function loadServers() {
    try { servers = await api("GET", "/servers"); } catch (e) { toast(e.detail, "error"); return; }
    const body = $("servers-body");
    body.replaceChildren();
    $("servers-empty").hidden = servers.length > 0;
    for (const s of servers) {
      const endpoints = el("ul", { className: "endpoints" });
      for (const e of s.endpoints) endpoints.append(el("li", {}, el("code", { textContent: e.url }), ` ${e.transport} · weight ${e.weight}`));
      const pooling = s.pooling_enabled
        ? el("span", { className: "badge on", textContent: `On · ${s.strategy}` })
        : el("span", { className: "badge off", textContent: "Off" });
      const status = serverEnabled(s)
        ? el("span", { className: "badge on", textContent: "Active" })
        : el("span", { className: "badge off", textContent: "Inactive" });
      const button = (label, action) => {
        const b = el("button", { type: "button", textContent: label });
        b.setAttribute("aria-label", `${label} ${s.id}`);
        b.addEventListener("click", () => action(s, b));
        return b;
      };
      // An inactive server has no pool (its pool routes answer 404): its pool buttons are
      // disabled, and the row says why.
      const note = serverEnabled(s) ? null : el("p", {
        className: "row-note", id: `inactive-${s.id}`,
        textContent: isAdmin() ? "Activate the server to configure its pool" : "Inactive: the server has no pool",
      });
      const poolButton = (label, action) => {
        const b = button(label, action);
        if (note) {
          b.disabled = true;
          b.title = note.textContent;
          b.setAttribute("aria-describedby", note.id);
        }
        return b;
      };
      const actions = isAdmin()
        ? el("div", { className: "row-actions" },
          button("Edit", editServer), poolButton("Pool Config", openPoolConfig), poolButton("Pool Stats", openPoolStats),
          button(serverEnabled(s) ? "Deactivate" : "Activate", toggleServer), button("Delete", deleteServer))
        : el("div", { className: "row-actions" }, poolButton("Pool Stats", openPoolStats));
      const row = el("tr", {}, el("td", {}, el("code", { textContent: s.id })), el("td", { textContent: serverName(s) }),
        el("td", {}, endpoints), el("td", {}, pooling), el("td", {}, status), el("td", {}, actions, ...(note ? [note] : [])));
      row.dataset.server = s.id;
      body.append(row);
    }
  }

  // Server CRUD: POST /servers, PUT/DELETE /servers/{id}. A PUT changes the fields its body
  // names and keeps the others (the pool config, credentials, access list…), so the page sends
  // only what it edits.
  const crudMissing = (e) => e.status === 404 || e.status === 405;
  async function toggleServer(s) {
    try {
      await api("PUT", `/servers/${encodeURIComponent(s.id)}`, { enabled: !serverEnabled(s) });
      toast(`Server ${s.id} ${serverEnabled(s) ? "deactivated" : "activated"}`);
    } catch (e) { toast(crudMissing(e) ? "This gateway cannot change servers (no PUT /servers/{id})" : e.detail, "error"); }
    loadServers();
  }
  async function deleteServer(s) {
    if (!confirm(`Delete server ${s.id}? Its pool is drained.`)) return;
    try {
      await api("DELETE", `/servers/${encodeURIComponent(s.id)}`);
      toast(`Server ${s.id} deleted`);
    } catch (e) { toast(crudMissing(e) && e.detail.startsWith("Method") ? "This gateway cannot delete servers (no DELETE /servers/{id})" : e.detail, "error"); }
    loadServers();
  }
  // Each row's endpoint as the API gave it: sent back with the row's edits, so that what the
  // form does not show (a lifecycle, a stdio command) is kept, and a URL the API masked
  // (`https://***@host/mcp`) stands for the stored one.
  const rowEndpoint = new WeakMap();
  function endpointRow(e = { url: "", transport: "streamable_http", weight: 1 }) {
    const row = $("endpoint-row").content.firstElementChild.cloneNode(true);
    rowEndpoint.set(row, e);
    row.querySelector("[name=url]").value = e.url;
    row.querySelector("[name=transport]").value = e.transport;
    row.querySelector("[name=weight]").value = e.weight;
    if (e.transport === "stdio") {
      // A program from the gateway's configuration file: only its weight changes here.
      row.querySelector("[name=url]").readOnly = true;
      row.querySelector("[name=transport]").disabled = true;
      row.title = "A stdio endpoint comes from the gateway's configuration file: only its weight can change here.";
    }
    row.querySelector(".remove").addEventListener("click", () => row.remove());
    $("sf-endpoints").append(row);
  }
  let editing = null;
  function editServer(s, opener) {
    editing = s;
    $("sf-title").textContent = s ? `Edit server ${s.id}` : "Add server";
    $("sf-id").value = s ? s.id : "";
    $("sf-id").readOnly = !!s;
    $("sf-name").value = s ? serverName(s) : "";
    $("sf-enabled").checked = s ? serverEnabled(s) : true;
    $("sf-endpoints").replaceChildren();
    for (const e of s ? s.endpoints : [undefined]) endpointRow(e);
    $("sf-error").textContent = "";
    $("sf-err-id").textContent = "";
    openDialog($("server-form"), opener);
  }
  $("add-server").addEventListener("click", (ev) => editServer(null, ev.currentTarget));
  $("sf-add-endpoint").addEventListener("click", () => endpointRow());
  $("sf-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = $("sf-id").value.trim();
    if (!/^[a-zA-Z0-9_-]{1,128}$/.test(id)) {
      $("sf-err-id").textContent = `id = "${id}" is invalid: must be 1 to 128 of a-z, A-Z, 0-9, _ and -`;
      $("sf-id").focus();
      return;
    }
    $("sf-err-id").textContent = "";
    const endpoints = [...$("sf-endpoints").children].map((r) => {
      const weight = Number(r.querySelector("[name=weight]").value);
      const given = rowEndpoint.get(r);
      if (given.transport === "stdio") return { ...given, weight };
      return { ...given, url: r.querySelector("[name=url]").value.trim(), transport: r.querySelector("[name=transport]").value, weight };
    });
    if (endpoints.length === 0 || endpoints.some((e) => !e.url)) { $("sf-error").textContent = "Every endpoint needs a URL, and a server at least one endpoint."; return; }
    const fields = { name: $("sf-name").value.trim() || id, endpoints, enabled: $("sf-enabled").checked };
    try {
      if (editing) await api("PUT", `/servers/${encodeURIComponent(id)}`, fields);
      else await api("POST", "/servers", { id, ...fields });
    } catch (e) {
      $("sf-error").textContent = crudMissing(e) && !editing ? "This gateway cannot add servers (no POST /servers)" : notSaved(e, "Save");
      return;
    }
    $("server-form").close();
    toast(editing ? `Server ${id} saved` : `Server ${id} added`);
    loadServers();
  });

  // ---- Pool Config ----
  let configServer = null;
  function setToggle(on) {
    $("pc-enabled").setAttribute("aria-checked", String(on));
    $("pc-fields").hidden = !on;
  }
  $("pc-enabled").addEventListener("click", () => setToggle($("pc-enabled").getAttribute("aria-checked") !== "true"));
  $("pc-strategy").addEventListener("change", () => { $("pc-strategy-when").textContent = STRATEGY_WHEN[$("pc-strategy").value] || ""; });
  function fieldError(field, message) {
    const input = $(`pc-${field}`);
    $(`pc-err-${field}`).textContent = message || "";
    if (message) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
  }
  function clearErrors() {
    for (const f of Object.keys(RANGES)) fieldError(f, "");
    $("pc-error").textContent = "";
  }
  async function openPoolConfig(s, opener) {
    configServer = s;
    clearErrors();
    let c;
    try { c = await api("GET", `/servers/${encodeURIComponent(s.id)}/pool/config`); } catch (e) { toast(e.detail, "error"); return; }
    $("pc-server").textContent = `Server ${s.id}`;
    setToggle(c.enabled);
    $("pc-strategy").value = c.strategy;
    $("pc-strategy-when").textContent = STRATEGY_WHEN[c.strategy] || "";
    for (const f of Object.keys(RANGES)) $(`pc-${f}`).value = c[f];
    $("pc-auto_scale").checked = c.auto_scale;
    openDialog($("pool-config"), opener);
    $("pc-enabled").focus();
  }
  // The API's checks, on the client: each range, then min_size <= size <= max_size.
  function validate(body) {
    const errors = {};
    for (const [f, [min, max, unit]] of Object.entries(RANGES)) {
      const v = body[f];
      if (!Number.isInteger(v) || v < min || v > max) errors[f] = `${f} = ${Number.isNaN(v) ? "(empty)" : v} is out of range: must be ${min} to ${max}${unit}`;
    }
    if (!errors.min_size && !errors.max_size && body.min_size > body.max_size) errors.max_size = `min_size (${body.min_size}) is above max_size (${body.max_size}): the sessions kept warm cannot exceed the hard cap`;
    else if (!errors.size && !errors.max_size && body.size > body.max_size) errors.size = `size (${body.size}) is above max_size (${body.max_size}): the target size cannot exceed the hard cap`;
    else if (!errors.size && !errors.min_size && body.min_size > body.size) errors.size = `min_size (${body.min_size}) is above size (${body.size}): the target size cannot be below the sessions kept warm`;
    return errors;
  }
  $("pc-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors();
    const enabled = $("pc-enabled").getAttribute("aria-checked") === "true";
    let body = { enabled };
    if (enabled) {
      body = { ...body, strategy: $("pc-strategy").value, auto_scale: $("pc-auto_scale").checked };
      for (const f of Object.keys(RANGES)) body[f] = $(`pc-${f}`).value === "" ? NaN : Number($(`pc-${f}`).value);
      // `data-validate` switches the client-side check on (the browser tests remove it to reach the API's 422).
      const errors = $("pc-form").hasAttribute("data-validate") ? validate(body) : {};
      if (Object.keys(errors).length) {
        for (const [f, m] of Object.entries(errors)) fieldError(f, m);
        $(`pc-${Object.keys(errors)[0]}`).focus();
        return;
      }
    }
    try {
      await api("PUT", `/servers/${encodeURIComponent(configServer.id)}/pool/config`, body);
    } catch (e) {
      // A 422 names its field: show the API's words next to it.
      const field = e.status === 422 && Object.keys(RANGES).find((f) => new RegExp(`\\b${f}\\b`).test(e.detail));
      if (field) { fieldError(field, e.detail); $(`pc-${field}`).focus(); } else $("pc-error").textContent = notSaved(e, "Save Configuration");
      return;
    }
    $("pool-config").close();
    toast("Pool configuration saved successfully");
    loadServers();
    poll();
  });

  // ---- Pool Stats ----
  let statsServer = null;
  let statsTimer = null;
  const STAT_ROWS = [
    ["Pool ID", "pool_id"], ["Strategy", "strategy"], ["Total sessions", "sessions_total"], ["Active sessions", "sessions_active"],
    ["Available sessions", "sessions_available"], ["Health score", (s) => s.health_score == null ? "n/a (no operation yet)" : `${s.health_score} (${s.health_status})`],
    ["Acquisitions", "acquisitions"], ["Releases", "releases"], ["Hits", "hits"], ["Misses", "misses"], ["Timeouts", "timeouts"], ["Evictions", "evictions"],
  ];
  async function refreshStats() {
    const s = statsServer;
    try {
      const stats = await api("GET", `/servers/${encodeURIComponent(s.id)}/pool/stats`);
      const dl = el("dl", { className: "stats" });
      for (const [label, key] of STAT_ROWS) {
        const dd = el("dd", { textContent: String(typeof key === "function" ? key(stats) : stats[key]) });
        dd.dataset.stat = typeof key === "function" ? "health_score" : key;
        dl.append(el("dt", { textContent: label }), dd);
      }
      $("ps-body").replaceChildren(dl, el("p", { className: "help", textContent: `Refreshed every ${REFRESH_SECS} s while open.` }));
      $("ps-disabled").hidden = true;
    } catch (e) {
      if (e.status !== 503) { $("ps-body").replaceChildren(el("p", { className: "error", textContent: e.detail })); return; }
      $("ps-body").replaceChildren();
      $("ps-disabled-text").textContent = `Pooling is not enabled for server ${s.id}, so it has no pool and no statistics yet (the API answers 503 "${e.detail}"). Requests to it open a new upstream session each. Enable pooling in its Pool Config; the pool is created at once.`;
      $("ps-disabled").hidden = false;
    }
  }
  async function openPoolStats(s, opener) {
    statsServer = s;
    $("ps-title").textContent = `Pool Stats · ${s.id}`;
    $("ps-body").replaceChildren();
    $("ps-disabled").hidden = true;
    await refreshStats();
    openDialog($("pool-stats"), opener);
    statsTimer = setInterval(refreshStats, REFRESH_SECS * 1000);
  }
  $("pool-stats").addEventListener("close", () => clearInterval(statsTimer));
  $("ps-open-config").addEventListener("click", () => {
    const opener = $("pool-stats").opener;
    $("pool-stats").close();
    openPoolConfig(statsServer, opener);
  });

  // ---- Live data: a ring buffer of samples per pooled server, the last 15 minutes ----
  const history = new Map(); // server id -> {t:[], active:[], idle:[], acq:[], p50:[], p99:[], hit:[], last}
  let health = [];
  let pollTimer = null;
  function quantiles(metricsText) {
    // mcp_pool_acquire_seconds{…server="X"…,quantile="0.5"} value  → per server the largest over its series, ms.
    const out = new Map();
    const re = /^mcp_pool_acquire_seconds\{([^}]*)\}\s+(\S+)$/gm;
    for (const m of metricsText.matchAll(re)) {
      const server = /server="([^"]*)"/.exec(m[1]);
      const q = /quantile="([^"]*)"/.exec(m[1]);
      if (!server || !q || (q[1] !== "0.5" && q[1] !== "0.99")) continue;
      const v = Number(m[2]) * 1000;
      if (!Number.isFinite(v)) continue;
      const entry = out.get(server[1]) || {};
      const key = q[1] === "0.5" ? "p50" : "p99";
      entry[key] = Math.max(entry[key] ?? 0, v);
      out.set(server[1], entry);
    }
    return out;
  }
  async function poll() {
    let pools, metricsText = "";
    try {
      [health, pools] = await Promise.all([api("GET", "/servers/pools/health"), api("GET", "/servers/pools")]);
      metricsText = isAdmin() ? await api("GET", "/metrics").catch(() => "") : "";
    } catch (e) { return; }
    const now = Date.now() / 1000;
    const q = quantiles(typeof metricsText === "string" ? metricsText : "");
    for (const p of pools) {
      if (!p.enabled) continue;
      const h = health.find((x) => x.server_id === p.server_id) || {};
      let buf = history.get(p.server_id);
      if (!buf) { buf = { t: [], active: [], idle: [], acq: [], p50: [], p99: [], hit: [], last: null }; history.set(p.server_id, buf); }
      const last = buf.last;
      const dt = last ? now - last.t : 0;
      const dAcq = last ? p.acquisitions - last.acquisitions : 0;
      const dHits = last ? p.hits - last.hits : 0;
      const dMiss = last ? p.misses - last.misses : 0;
      buf.t.push(now);
      buf.active.push(h.active ?? p.sessions_active);
      buf.idle.push((h.total ?? p.sessions_total) - (h.active ?? p.sessions_active));
      buf.acq.push(last && dt > 0 && dAcq >= 0 ? dAcq / dt : null);
      buf.p50.push(q.get(p.server_id)?.p50 ?? null);
      buf.p99.push(q.get(p.server_id)?.p99 ?? null);
      buf.hit.push(dHits + dMiss > 0 ? (100 * dHits) / (dHits + dMiss) : null);
      buf.last = { t: now, acquisitions: p.acquisitions, hits: p.hits, misses: p.misses };
      while (buf.t.length && buf.t[0] < now - WINDOW_SECS) for (const k of ["t", "active", "idle", "acq", "p50", "p99", "hit"]) buf[k].shift();
    }
    for (const id of history.keys()) if (!pools.some((p) => p.enabled && p.server_id === id)) history.delete(id);
    if (!$("page-health").hidden) renderHealth();
  }
  function startPolling() { stopPolling(); poll(); pollTimer = setInterval(poll, REFRESH_SECS * 1000); }
  function stopPolling() { clearInterval(pollTimer); pollTimer = null; history.clear(); }
  $("refresh-secs").textContent = String(REFRESH_SECS);

  // ---- Pool Health ----
  const cards = new Map(); // server id -> {node, charts}
  const CHARTS = [
    { title: "Sessions", series: [["active", "Active", "#2563eb"], ["idle", "Idle", "#94a3b8"]] },
    { title: "Acquisitions / s", series: [["acq", "Acquisitions/s", "#16a34a"]] },
    { title: "Acquire wait (ms)", series: [["p50", "p50", "#f59e0b"], ["p99", "p99", "#dc2626"]] },
    { title: "Hit rate (%)", series: [["hit", "Hit rate", "#7c3aed"]], range: [0, 100] },
  ];
  const STATUS_WORDS = { healthy: "Healthy", degraded: "Degraded", unhealthy: "Unhealthy", unknown: "Unknown" };
  function makeCard(id) {
    const node = el("article", { className: "card" });
    node.dataset.server = id;
    node.setAttribute("aria-labelledby", `card-${id}`);
    const head = el("header", {}, el("span", { className: "dot", ariaHidden: "true" }), el("h2", { id: `card-${id}`, textContent: id }), el("span", { className: "status" }));
    const figures = el("dl", { className: "figures" });
    const endpoints = el("ul", { className: "circuits" });
    const chartBox = el("div", { className: "charts" });
    node.append(head, figures, endpoints, chartBox);
    const charts = CHARTS.map((c) => {
      const caption = el("figcaption", { textContent: c.title });
      if (c.series.length > 1) {
        for (const [, label, stroke] of c.series) {
          const key = el("span", { className: "key", textContent: `■ ${label}` });
          key.style.color = stroke;
          caption.append(" ", key);
        }
      }
      const box = el("figure", {}, caption);
      chartBox.append(box);
      if (typeof uPlot === "undefined") return null;
      const opts = {
        width: 235, height: 110, legend: { show: false }, cursor: { show: false },
        scales: { x: { time: true }, y: c.range ? { range: c.range } : { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
        axes: [{ size: 24, space: 70 }, { size: 36 }],
        series: [{}, ...c.series.map(([, label, stroke]) => ({ label, stroke, width: 2, spanGaps: false }))],
      };
      return { def: c, plot: new uPlot(opts, [[], ...c.series.map(() => [])], box) };
    });
    $("health-cards").append(node);
    const card = { node, charts, figures, endpoints };
    cards.set(id, card);
    return card;
  }
  function renderHealth() {
    const pooled = health.filter((h) => history.has(h.server_id));
    $("health-empty").hidden = pooled.length > 0;
    for (const [id, card] of cards) if (!pooled.some((h) => h.server_id === id)) { card.node.remove(); cards.delete(id); }
    for (const h of pooled) {
      const card = cards.get(h.server_id) || makeCard(h.server_id);
      card.node.dataset.status = h.status;
      card.node.querySelector(".status").textContent = STATUS_WORDS[h.status] || h.status;
      card.figures.replaceChildren();
      const fig = (label, value, key) => { const dd = el("dd", { textContent: value }); dd.dataset.figure = key; card.figures.append(el("div", {}, el("dt", { textContent: label }), dd)); };
      fig("Health score", h.score == null ? "–" : String(h.score), "score");
      fig("Total", String(h.total), "total");
      fig("Active", String(h.active), "active");
      fig("Available", String(h.available), "available");
      fig("Hit rate", `${Math.round((h.hit_rate || 0) * 100)} %`, "hit_rate");
      card.endpoints.replaceChildren(...(h.endpoints || []).map((e) => {
        const li = el("li", {}, el("span", { className: `circuit ${e.circuit}`, textContent: `circuit ${e.circuit.replace("_", "-")}` }), " ", el("code", { textContent: e.url }));
        li.dataset.circuit = e.circuit;
        // Why it failed last, in the gateway's words (rendered as text, never as markup).
        if (e.last_error) {
          const age = e.last_error_age_secs == null ? "" : ` (${Math.round(e.last_error_age_secs)} s ago)`;
          const why = el("p", { className: "last-error", textContent: `Last error${age}: ${e.last_error}` });
          why.dataset.lastError = "";
          li.append(why);
        }
        return li;
      }));
      const buf = history.get(h.server_id);
      for (const c of card.charts) if (c) c.plot.setData([buf.t.slice(), ...c.def.series.map(([k]) => buf[k].slice())]);
    }
  }

  // ---- Metrics ----
  let metricsRaw = "";
  async function loadMetrics() {
    try { metricsRaw = await api("GET", "/metrics"); } catch (e) { metricsRaw = e.detail; }
    filterMetrics();
  }
  function filterMetrics() {
    const f = $("metrics-filter").value.trim();
    $("metrics-text").textContent = String(metricsRaw).split("\n").filter((l) => !f || l.includes(f)).join("\n");
  }
  $("metrics-filter").addEventListener("input", filterMetrics);
  $("metrics-refresh").addEventListener("click", loadMetrics);

  // ---- Start: a stored token, else a gateway without auth, else the sign-in form ----
  window.addEventListener("DOMContentLoaded", async () => {
    if (await signIn(token)) signOut("");
  });
})();
