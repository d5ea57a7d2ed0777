// The demo page. Polls /state (cheap, no SCAN) every second and, while a user is watched, that
// user's /inspect; /metrics every two seconds for the charts. With no users loaded nothing else
// is polled: every panel shows its empty state and what to do next.
"use strict";
const $ = (id) => document.getElementById(id);
const STREAM_VIEW = "user_streaming_features";
let features = { batch: [], streaming: [] };
let state = null;
const charts = {};
window.demoCharts = charts; // for the browser test: the data each chart draws

async function call(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

// ---- formatting: human-readable, exact value on hover ----

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "-";
  const s = ms / 1000;
  if (s < 60) return (s < 10 ? s.toFixed(1) : Math.floor(s)) + " s";
  const m = Math.floor(s / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
  if (m < 60) return `${m} m ${Math.floor(s % 60)} s`;
  if (h < 24) return `${h} h ${m % 60} m`;
  return `${d} d ${h % 24} h`;
}

function fmtSeconds(seconds) { return seconds === null || seconds === undefined ? "none" : fmtDuration(seconds * 1000); }

function fmtBytes(n) { return n === null || n === undefined ? "-" : n < 1024 ? n + " B" : (n / 1024).toFixed(1) + " KiB"; }

function fmtTime(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

// An expiry cell: a field TTL, or for a field without one, the key's (it goes with the key).
function expiry(ttlMs, keyTtlMs) {
  if (ttlMs === -2) return { text: "missing", title: "HPTTL -2: the field is not there", cls: "missing" };
  if (ttlMs === -1) {
    if (keyTtlMs > 0) return { text: "with key · " + fmtDuration(keyTtlMs), title: `no field TTL; the key expires in ${keyTtlMs} ms`, cls: "batch" };
    return { text: "no TTL", title: "no field TTL and no key TTL" };
  }
  return { text: fmtDuration(ttlMs), title: `HPTTL ${ttlMs} ms`, cls: "stream" };
}

function setText(el, text, title) { el.textContent = text; if (title !== undefined) el.title = title; }

function show(el, text, isError) { el.textContent = text; el.classList.toggle("error", !!isError); }

function cell(row, text, cls, title) {
  const td = row.insertCell(); td.textContent = text;
  if (cls) td.className = cls;
  if (title) td.title = title;
  return td;
}

// ---- state ----

async function refreshState() {
  try {
    state = await call("GET", "/state");
  } catch (e) { show($("st-error"), e.message, true); $("st-error").hidden = false; return; }
  const s = state;
  $("st-error").hidden = true;
  $("st-users").textContent = s.users + (s.users_exact ? "" : " (est.)");
  $("st-fresh").textContent = s.fresh_users + (s.fresh_users_exact ? "" : " (est.)");
  $("st-population").textContent = s.population;
  $("st-watched").textContent = s.watched || "none";
  setText($("st-batch-ttl"), fmtSeconds(s.batch_ttl_seconds), s.batch_ttl_seconds === null ? "" : s.batch_ttl_seconds + " s");
  setText($("st-stream-ttl"), fmtSeconds(s.streaming_ttl_seconds), s.streaming_ttl_seconds + " s");
  $("st-prefix").textContent = s.key_prefix;
  $("st-written").textContent = s.store_stats.written || 0;
  $("st-reads").textContent = (s.counters.reads || 0) + (s.counters.batch_reads || 0);
  setText($("st-last-read"), s.last_read_kind ? `${s.last_read_ms.toFixed(2)} ms (${s.last_read_kind})` : "-",
    s.last_read_kind ? s.last_read_ms + " ms" : "");
  const w = s.worker;
  $("wk-status").textContent = w.running ? "running" : "paused";
  $("wk-status").className = "badge " + (w.running ? "running" : "paused");
  $("wk-ticks").textContent = w.ticks; $("wk-writes").textContent = w.writes;
  $("wk-failed").textContent = w.failed_writes; $("wk-skipped").textContent = w.skipped_missing;
  for (const [id, value] of [["set-ttl", s.streaming_ttl_seconds], ["set-users", w.users_per_tick], ["set-tick", w.interval_seconds]]) {
    if (document.activeElement !== $(id) && !$(id).dataset.edited) $(id).value = value;
  }
  if (!features.batch.length) { features = s.features; buildFeaturePicker(); }
  if (s.watched && document.activeElement !== $("read-user") && !$("read-user").dataset.edited) $("read-user").value = s.watched;
}

function buildFeaturePicker() {
  const box = $("read-features");
  const defaults = ["risk_segment", "tx_count_7d", "avg_amount_30d", "tx_count_5m", "failed_logins_15m"];
  for (const [kind, names] of [["batch", features.batch], ["streaming", features.streaming]]) {
    for (const name of names) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "checkbox"; input.name = "features"; input.value = name; input.checked = defaults.includes(name);
      label.append(input, name, Object.assign(document.createElement("span"), { className: "tag " + kind, textContent: kind }));
      box.append(label);
    }
  }
}

// ---- freshness of the watched user ----

function bar(name, ms, fullSeconds, kind, value, when) {
  const row = document.createElement("div"); row.className = "bar-row"; row.dataset.field = name;
  const pct = ms > 0 && fullSeconds ? Math.min(100, ms / 10 / fullSeconds) : 0;
  row.innerHTML = '<span class="name"></span><span class="value"></span><div class="bar-track"><div class="bar-fill ' + kind +
    '"></div></div><span class="ttl"></span><span class="when"></span>';
  row.querySelector(".name").textContent = name;
  row.querySelector(".value").textContent = value === null || value === undefined ? "" : value;
  row.querySelector(".bar-fill").style.width = pct + "%";
  const e = ms === -2 ? { text: "missing", title: "gone: expired or never written", cls: "missing" }
    : { text: fmtDuration(ms), title: ms + " ms left" };
  setText(row.querySelector(".ttl"), e.text, e.title);
  if (e.cls) row.querySelector(".ttl").classList.add(e.cls);
  if (when) setText(row.querySelector(".when"), when.text, when.title);
  return row;
}

function eventTime(micros, nowMs) {
  if (!micros) return null;
  const ms = Number(micros) / 1000, date = new Date(ms);
  return { text: `${fmtTime(date)} · ${fmtDuration(Math.max(0, nowMs - ms))} ago`, title: `${date.toISOString()} (${micros} µs)` };
}

function emptyState(el, html) { el.innerHTML = html; el.hidden = false; }

async function refreshFreshness() {
  const box = $("fr-bars"), empty = $("fr-empty");
  if (!state) return;
  if (!state.watched) {
    $("fr-user").textContent = "no one";
    box.replaceChildren(); $("fr-meta").textContent = "";
    emptyState(empty, state.population === 0
      ? "<b>No users loaded.</b> Bulk-load users (top right) to start; the worker then streams fresh data for the watched user."
      : "No user is watched. Use <i>Pick a user with fresh streaming data</i>.");
    return;
  }
  $("fr-user").textContent = state.watched;
  let r;
  try {
    r = await call("GET", "/inspect?user_id=" + encodeURIComponent(state.watched));
  } catch (e) { emptyState(empty, e.message); box.replaceChildren(); return; }
  empty.hidden = true;
  const now = Date.now();
  const stamps = Object.fromEntries(r.fields.filter((f) => f.feature === "_ts").map((f) => [f.view, f.value]));
  box.replaceChildren();
  box.append(bar("key TTL (batch)", r.key_ttl_ms, r.batch_ttl_seconds, "batch", r.exists ? "" : "key gone",
    eventTime(stamps.user_batch_features, now)));
  for (const f of r.fields) {
    if (f.view !== STREAM_VIEW || f.feature === "_ts") continue;
    box.append(bar(f.field, f.ttl_ms, r.streaming_ttl_seconds, "stream", f.value,
      f.ttl_ms === -2 ? null : eventTime(stamps[STREAM_VIEW], now)));
  }
  $("fr-meta").textContent = `${r.key} · ${r.fields.length + Object.keys(r.other_fields).length} fields in one hash · ` +
    `encoding ${r.encoding || "-"} · MEMORY USAGE ${fmtBytes(r.memory_bytes)}`;
}

// ---- charts (uPlot, shipped under /static/vendor) ----

const COLORS = { batch: "#3b6fd8", stream: "#e07b24", grey: "#98a2b3", green: "#1f9d55" };

function makeChart(id, series, yLabel, log) {
  const el = $(id);
  const opts = {
    width: Math.max(280, el.clientWidth || 400), height: 170,
    scales: { x: { time: true }, y: log ? { distr: 3 } : {} },
    axes: [{ stroke: "#667085", grid: { stroke: "#eef0f3" } }, { stroke: "#667085", grid: { stroke: "#eef0f3" }, label: yLabel, size: 56 }],
    legend: { live: false },
    series: [{}, ...series.map(([label, color, dash]) => ({ label, stroke: color, width: 2, dash, spanGaps: true, points: { show: false } }))],
  };
  const chart = new uPlot(opts, [[], ...series.map(() => [])], el);
  charts[id] = chart;
  return chart;
}

function initCharts() {
  makeChart("chart-latency", [["single p50", COLORS.batch], ["single p99", COLORS.batch, [5, 4]],
    ["batch p50", COLORS.stream], ["batch p99", COLORS.stream, [5, 4]]], "ms (log)", true);
  makeChart("chart-writes", [["rows/s", COLORS.green]], "rows/s");
  makeChart("chart-users", [["in Redis", COLORS.batch], ["fresh streaming", COLORS.stream]], "users");
  makeChart("chart-memory", [["watched hash", COLORS.batch]], "bytes");
  window.addEventListener("resize", () => {
    for (const c of Object.values(charts)) c.setSize({ width: Math.max(280, c.root.parentElement.clientWidth), height: 170 });
  });
}

async function refreshCharts() {
  let m;
  try { m = await call("GET", "/metrics"); } catch (e) { return; }
  charts["chart-latency"].setData([m.t, m.single_p50_ms, m.single_p99_ms, m.batch_p50_ms, m.batch_p99_ms]);
  charts["chart-writes"].setData([m.t, m.writes_per_second]);
  charts["chart-users"].setData([m.t, m.live_users, m.fresh_users]);
  charts["chart-memory"].setData([m.t, m.watched_memory_bytes]);
}

// ---- views ----

async function loadViews() {
  let r;
  try { r = await call("GET", "/views"); } catch (e) { show($("views"), e.message, true); return; }
  const box = $("views"); box.replaceChildren();
  for (const v of r.views) {
    const card = document.createElement("div"); card.className = "view " + v.mode; card.dataset.view = v.name;
    const ttl = v.mode === "streaming"
      ? `per-field TTL ${fmtSeconds(v.field_ttl_seconds)} (HPEXPIRE on each write)`
      : `key TTL ${fmtSeconds(v.key_ttl_seconds)} (EXPIRE of the whole key on each write; a bulk load here sets its own)`;
    card.innerHTML = `<h3><span class="tag ${v.mode}"></span> <code></code></h3><p class="why"></p><p class="ttl"></p>` +
      `<table><thead><tr><th>Feature</th><th>Redis field</th><th>Type</th></tr></thead><tbody></tbody></table>`;
    card.querySelector(".tag").textContent = v.mode;
    card.querySelector("code").textContent = v.name;
    card.querySelector(".why").textContent = `${v.mode} because ${v.why}.`;
    card.querySelector(".ttl").textContent = `${ttl} · key ${v.key_example} · timestamp field ${v.ts_field}`;
    const body = card.querySelector("tbody");
    for (const f of v.features) { const row = body.insertRow(); cell(row, f.name); cell(row, f.field, "mono"); cell(row, f.type); }
    box.append(card);
  }
}

// ---- actions ----

// A field the user touched is not overwritten by the next refresh until it is submitted.
for (const id of ["set-ttl", "set-users", "set-tick", "read-user"]) {
  for (const kind of ["focus", "input", "change"]) $(id).addEventListener(kind, () => { $(id).dataset.edited = "1"; });
}

$("settings-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const r = await call("POST", "/worker/settings", {
      streaming_ttl_seconds: $("set-ttl").value, users_per_tick: $("set-users").value, tick_seconds: $("set-tick").value,
    });
    for (const id of ["set-ttl", "set-users", "set-tick"]) delete $(id).dataset.edited;
    show($("settings-result"), `New pushes get a ${fmtSeconds(r.streaming_ttl_seconds)} field TTL; ${r.users_per_tick} user(s) every ${r.tick_seconds} s.`);
  } catch (e) { show($("settings-result"), e.message, true); }
  refreshState(); loadViews();
});

$("wk-toggle").addEventListener("click", async () => { await call("POST", "/worker/toggle", {}); refreshState(); });

$("scenario-expire").addEventListener("click", async () => {
  try {
    const r = await call("POST", "/scenario/expire", { ttl_seconds: 20 });
    show($("scenario-result"), `Worker paused. ${r.user_id}'s streaming fields were pushed with a ${r.streaming_ttl_seconds} s TTL ` +
      `and are gone by ${fmtTime(new Date(r.expires_by * 1000))}; its batch fields stay with the key.`);
  } catch (e) { show($("scenario-result"), e.message, true); }
  await refreshState(); refreshFreshness(); loadViews();
});

$("pick-fresh").addEventListener("click", async () => {
  try { await call("POST", "/watch", {}); $("fr-meta").classList.remove("error"); }
  catch (e) { emptyState($("fr-empty"), e.message); }
  await refreshState(); refreshFreshness();
});

$("bulk-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  show($("bulk-result"), "loading...");
  try {
    const r = await call("POST", "/bulk-load", { count: $("bulk-count").value, ttl_seconds: $("bulk-ttl").value });
    show($("bulk-result"), `Materialized ${r.count} user(s) with a ${fmtSeconds(r.ttl_seconds)} key TTL in ${r.seconds} s.`);
  } catch (e) { show($("bulk-result"), e.message, true); }
  await refreshState(); refreshFreshness();
});

$("read-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const chosen = [...document.querySelectorAll("#read-features input:checked")].map((i) => i.value);
  const table = $("read-table");
  try {
    const r = await call("POST", "/read", { user_id: $("read-user").value, features: chosen });
    delete $("read-user").dataset.edited;
    show($("read-latency"), `${r.key}: ${r.latency_ms.toFixed(2)} ms, key expires in ${r.key_ttl_ms > 0 ? fmtDuration(r.key_ttl_ms) : "-"}`);
    const body = table.tBodies[0]; body.replaceChildren();
    for (const f of r.features) {
      const row = body.insertRow(); row.dataset.feature = f.name;
      const e = expiry(f.field_ttl_ms, r.key_ttl_ms);
      cell(row, f.name, "mono", `field ${f.field} of view ${f.view}`);
      cell(row, f.layer, "tag " + f.layer);
      cell(row, f.value === null ? "-" : String(f.value));
      cell(row, f.status, "st-" + f.status);
      cell(row, e.text, e.cls, e.title);
      cell(row, f.event_time ? fmtTime(new Date(f.event_time)) : "-", null, f.event_time || "");
      cell(row, f.age_ms === null ? "-" : fmtDuration(f.age_ms), null, f.age_ms === null ? "" : f.age_ms + " ms");
    }
    table.hidden = false;
  } catch (e) { show($("read-latency"), e.message, true); table.hidden = true; }
});

$("batch-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const table = $("batch-summary");
  try {
    const r = await call("POST", "/batch-read", { count: $("batch-count").value });
    const s = r.summary;
    show($("batch-result"), `${s.users} users in ${r.total_ms.toFixed(2)} ms (${r.per_user_ms.toFixed(3)} ms per user); ` +
      `${s.complete_users} with every feature present.`);
    const body = table.tBodies[0]; body.replaceChildren();
    for (const f of s.per_feature) {
      const row = body.insertRow(); row.dataset.feature = f.name;
      cell(row, f.name, "mono"); cell(row, f.layer, "tag " + f.layer);
      cell(row, String(f.present), "num"); cell(row, String(f.missing), f.missing ? "num missing" : "num");
    }
    table.hidden = false;
    $("batch-users").textContent = r.users.map((u) => `${u.user_id}: ${u.present}/${u.requested}` +
      (u.missing.length ? ` (missing ${u.missing.join(", ")})` : "")).join("\n");
    $("batch-details").hidden = false;
  } catch (e) { show($("batch-result"), e.message, true); table.hidden = true; $("batch-details").hidden = true; }
});

$("inspect-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const table = $("inspect-table");
  try {
    const r = await call("GET", "/inspect?user_id=" + encodeURIComponent($("inspect-user").value));
    show($("inspect-key"), `${r.key} · key ${r.key_ttl_ms === -2 ? "missing" : "expires in " + fmtDuration(r.key_ttl_ms)} · ` +
      `encoding ${r.encoding || "-"} · ${fmtBytes(r.memory_bytes)}`);
    const body = table.tBodies[0]; body.replaceChildren();
    for (const f of r.fields) {
      const row = body.insertRow(); row.dataset.field = f.field;
      const layer = f.view === STREAM_VIEW ? "streaming" : "batch";
      const e = expiry(f.ttl_ms, r.key_ttl_ms);
      let value = f.value === null ? "<missing>" : f.value, title = "";
      if (f.feature === "_ts" && f.value !== null) { const t = eventTime(f.value, Date.now()); value = t.text; title = t.title; }
      cell(row, f.field, "mono"); cell(row, layer, "tag " + layer); cell(row, value, null, title); cell(row, e.text, e.cls, e.title);
    }
    table.hidden = false;
  } catch (e) { show($("inspect-key"), e.message, true); table.hidden = true; }
});

$("reset").addEventListener("click", async () => {
  try {
    const r = await call("POST", "/reset");
    show($("reset-result"), `Deleted ${r.deleted} key(s) matching ${r.pattern}. Bulk-load to start again.`);
  } catch (e) { show($("reset-result"), e.message, true); }
  // Every panel back to its empty state.
  for (const id of ["read-table", "inspect-table", "batch-summary", "batch-details"]) $(id).hidden = true;
  show($("read-latency"), "No users loaded: bulk-load, then read.");
  show($("inspect-key"), "No users loaded: bulk-load, then inspect.");
  show($("batch-result"), "No users loaded: bulk-load, then score.");
  for (const id of ["scenario-result", "settings-result", "bulk-result"]) show($(id), "");
  await refreshState(); refreshFreshness();
});

initCharts();
loadViews();
refreshState().then(refreshFreshness).then(refreshCharts);
setInterval(async () => { await refreshState(); refreshFreshness(); }, 1000);
setInterval(refreshCharts, 2000);
