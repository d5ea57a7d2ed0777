// The demo page: polls /state (cheap, no SCAN) and the watched user's /inspect every second.
"use strict";
const $ = (id) => document.getElementById(id);
let features = { batch: [], streaming: [] };
let watched = "u0001";

async function call(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function ttlText(ms) {
  if (ms === -2) return "missing";
  if (ms === -1) return "no TTL";
  return (ms / 1000).toFixed(1) + " s";
}

function show(el, text, isError) { el.textContent = text; el.classList.toggle("error", !!isError); }

function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; }

async function refreshState() {
  try {
    const s = await call("GET", "/state");
    $("st-error").hidden = true;
    $("st-users").textContent = s.users + (s.users_exact ? "" : " (est.)");
    $("st-population").textContent = s.population;
    $("st-prefix").textContent = s.key_prefix;
    $("st-batch-ttl").textContent = s.batch_ttl_seconds === null ? "none" : s.batch_ttl_seconds + " s";
    $("st-stream-ttl").textContent = s.streaming_ttl_seconds + " s";
    $("st-written").textContent = s.store_stats.written || 0;
    $("st-reads").textContent = (s.counters.reads || 0) + (s.counters.batch_reads || 0);
    $("st-last-read").textContent = s.last_read_ms ? s.last_read_ms.toFixed(2) + " ms" : "-";
    const w = s.worker;
    $("wk-status").textContent = w.running ? "running" : "paused";
    $("wk-status").className = "badge " + (w.running ? "running" : "paused");
    $("wk-ticks").textContent = w.ticks; $("wk-writes").textContent = w.writes;
    $("wk-failed").textContent = w.failed_writes; $("wk-skipped").textContent = w.skipped_missing;
    if (!features.batch.length) { features = s.features; buildFeaturePicker(); }
  } catch (e) { show($("st-error"), e.message, true); $("st-error").hidden = false; }
}

function buildFeaturePicker() {
  const box = $("read-features");
  const defaults = ["risk_segment", "tx_count_7d", "avg_amount_30d", "tx_count_5m", "failed_logins_15m"];
  for (const [kind, names] of [["batch", features.batch], ["streaming", features.streaming]]) {
    for (const name of names) {
      const label = document.createElement("label");
      const box_ = document.createElement("input");
      box_.type = "checkbox"; box_.name = "features"; box_.value = name; box_.checked = defaults.includes(name);
      label.append(box_, name, Object.assign(document.createElement("span"), { className: "tag", textContent: kind }));
      box.append(label);
    }
  }
}

function bar(name, ms, fullSeconds, kind, note) {
  const row = document.createElement("div"); row.className = "bar-row";
  const pct = ms > 0 && fullSeconds ? Math.min(100, (ms / 10 / fullSeconds)) : 0;
  row.innerHTML = '<span class="name"></span><div class="bar-track"><div class="bar-fill ' + kind +
    '"></div></div><span class="ttl"></span>';
  row.querySelector(".name").textContent = name;
  row.querySelector(".bar-fill").style.width = pct + "%";
  row.querySelector(".ttl").textContent = note || ttlText(ms);
  if (ms === -2) row.querySelector(".ttl").classList.add("missing");
  return row;
}

async function refreshFreshness() {
  $("fr-user").textContent = watched;
  const box = $("fr-bars");
  try {
    const r = await call("GET", "/inspect?user_id=" + encodeURIComponent(watched));
    box.replaceChildren();
    box.append(bar("key TTL (batch)", r.key_ttl_ms, r.batch_ttl_seconds, "batch",
      r.exists ? null : "key gone"));
    for (const f of r.fields) {
      if (f.view !== "user_streaming_features" || f.feature === "_ts") continue;
      box.append(bar(f.field, f.ttl_ms, r.streaming_ttl_seconds, "stream"));
    }
  } catch (e) { box.replaceChildren(Object.assign(document.createElement("p"), { className: "hint", textContent: e.message })); }
}

$("wk-toggle").addEventListener("click", async () => { await call("POST", "/worker/toggle", {}); refreshState(); });

$("bulk-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  show($("bulk-result"), "loading...");
  try {
    const r = await call("POST", "/bulk-load", { count: $("bulk-count").value, ttl_seconds: $("bulk-ttl").value });
    show($("bulk-result"), `Materialized ${r.count} user(s) with a ${r.ttl_seconds}s key TTL in ${r.seconds}s.`);
  } catch (e) { show($("bulk-result"), e.message, true); }
  refreshState();
});

$("read-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const chosen = [...document.querySelectorAll('#read-features input:checked')].map((i) => i.value);
  const table = $("read-table");
  try {
    const r = await call("POST", "/read", { user_id: $("read-user").value, features: chosen });
    watched = r.user_id;
    show($("read-latency"), `${r.key}: ${r.latency_ms.toFixed(2)} ms, key TTL ${ttlText(r.key_ttl_ms)}`);
    const body = table.tBodies[0]; body.replaceChildren();
    for (const f of r.features) {
      const row = body.insertRow(); row.dataset.feature = f.name;
      cell(row, f.name); cell(row, f.view === "user_batch_features" ? "batch" : "streaming");
      cell(row, f.value === null ? "-" : String(f.value)); cell(row, f.status, "st-" + f.status);
      cell(row, ttlText(f.field_ttl_ms), "num");
    }
    table.hidden = false;
    refreshFreshness();
  } catch (e) { show($("read-latency"), e.message, true); table.hidden = true; }
});

$("batch-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const r = await call("POST", "/batch-read", { count: $("batch-count").value });
    show($("batch-result"), `${r.count} users in ${r.total_ms.toFixed(2)} ms (${r.per_user_ms.toFixed(3)} ms per user)`);
    $("batch-users").textContent = r.users.map((u) => `${u.user_id}: ${u.present}/${u.requested}`).join("  ");
  } catch (e) { show($("batch-result"), e.message, true); }
});

$("inspect-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const table = $("inspect-table");
  try {
    const r = await call("GET", "/inspect?user_id=" + encodeURIComponent($("inspect-user").value));
    watched = r.user_id;
    show($("inspect-key"), `${r.key}  key TTL ${r.key_ttl_ms === -2 ? "missing" : ttlText(r.key_ttl_ms)}  encoding ${r.encoding || "-"}`);
    const body = table.tBodies[0]; body.replaceChildren();
    for (const f of r.fields) {
      const row = body.insertRow(); row.dataset.field = f.field;
      cell(row, f.field); cell(row, f.view === "user_batch_features" ? "batch" : "streaming", "tag");
      cell(row, f.value === null ? "<missing>" : f.value);
      cell(row, f.ttl, f.ttl_ms === -2 ? "missing" : "num");
    }
    table.hidden = false;
    refreshFreshness();
  } catch (e) { show($("inspect-key"), e.message, true); table.hidden = true; }
});

$("reset").addEventListener("click", async () => {
  try {
    const r = await call("POST", "/reset");
    show($("reset-result"), `Deleted ${r.deleted} key(s) matching ${r.pattern}.`);
  } catch (e) { show($("reset-result"), e.message, true); }
  refreshState(); refreshFreshness();
});

refreshState(); refreshFreshness();
setInterval(() => { refreshState(); refreshFreshness(); }, 1000);
