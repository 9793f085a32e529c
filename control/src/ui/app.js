// vGPU control plane web UI: plain JavaScript over the REST API (api-spec/openapi.yaml); no external assets.
// The access token lives in sessionStorage only, so closing the tab signs out.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("vgpu_token");
let me = null;
let cache = { tenants: [], gpus: [], plans: [] };
let timer = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

function say(msg, info) {
  const s = $("status");
  s.className = info ? "info" : "";
  s.textContent = msg || "";
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => null);
  if (r.status === 401 && path !== "/v1/auth/token") { signOut("Your session ended; sign in again."); }
  if (!r.ok) throw new Error((data && data.error && data.error.message) || ("HTTP " + r.status));
  return data;
}

const isAdmin = () => me && me.role === "admin";
const fmtTime = (t) => t ? new Date(t * 1000).toLocaleString() : "—";
const fmtBytes = (b) => { const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; while (b >= 1024 && i < 4) { b /= 1024; i++; } return b.toFixed(i ? 1 : 0) + " " + u[i]; };
const tenantName = (id) => (cache.tenants.find((t) => t.id === id) || { name: id }).name;

function signOut(msg) {
  token = null; me = null;
  sessionStorage.removeItem("vgpu_token");
  if (timer) clearInterval(timer);
  // Nothing of the previous user's data stays on the page for the next one.
  cache = { tenants: [], gpus: [], plans: [] };
  document.querySelectorAll("main tbody, main select:not(#usage-days), #new-secret, #usage-chart").forEach((e) => e.replaceChildren());
  document.querySelectorAll("main > section").forEach((s) => (s.hidden = s.id !== "signin"));
  $("nav").hidden = true; $("signout").hidden = true; $("whoami").textContent = "";
  say(msg || "");
}

async function signIn(ev) {
  ev.preventDefault();
  say("");
  try {
    const r = await api("POST", "/v1/auth/token", { api_key: $("api-key").value.trim() });
    token = r.token;
    sessionStorage.setItem("vgpu_token", token);
    $("api-key").value = "";
    await start();
  } catch (e) { say("Sign-in failed: " + e.message); }
}

async function start() {
  me = await api("GET", "/v1/me");
  $("whoami").textContent = me.role === "admin" ? "Signed in as admin" : "Signed in as tenant " + me.tenant_id;
  $("signout").hidden = false;
  $("nav").hidden = false;
  document.querySelectorAll("#nav a").forEach((a) => (a.parentElement.hidden = a.dataset.admin === "1" && !isAdmin()));
  document.querySelectorAll(".admin-only").forEach((e) => (e.hidden = !isAdmin()));
  document.querySelectorAll("main > section").forEach((s) => (s.hidden = s.id === "signin" || (s.id === "tenants" && !isAdmin())));
  await refreshAll();
  timer = setInterval(() => loadGpus().catch(() => {}), 5000);
}

async function refreshAll() {
  try {
    await loadPlans();
    await loadTenants();
    await loadGpus();
    await loadAssignments();
    await loadUsage();
    await loadSessions();
  } catch (e) { say(e.message); }
}

async function loadGpus() {
  cache.gpus = (await api("GET", "/v1/gpus?limit=1000")).gpus;
  const rows = cache.gpus.map((g) => el("tr", {},
    el("td", {}, g.server_name), el("td", {}, `#${g.index} ${g.name}`), el("td", {}, el("code", {}, g.uuid)),
    el("td", { class: g.online ? "online" : "offline" }, g.online ? "online" : "offline"),
    el("td", {}, el("meter", { min: 0, max: 100, value: g.utilization_pct, "aria-label": `Utilization of ${g.uuid}` }), ` ${g.utilization_pct.toFixed(0)} %`),
    el("td", { class: "num" }, `${g.memory_used_mib} / ${g.memory_total_mib} MiB`),
    el("td", { class: "num" }, `${g.assigned_memory_mib} MiB`),
    el("td", { class: "num" }, `${(g.assigned_share * 100).toFixed(0)} %`)));
  $("gpu-rows").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 8 }, "No GPUs yet: start a GPU server with the node token."))]));
  const sel = $("assign-gpu"), keep = sel.value;
  sel.replaceChildren(...cache.gpus.map((g) => el("option", { value: g.uuid }, `${g.server_name} #${g.index} ${g.name} (${g.memory_total_mib - g.assigned_memory_mib} MiB free)`)));
  if (keep) sel.value = keep;
}

async function loadPlans() {
  cache.plans = (await api("GET", "/v1/plans?limit=1000")).plans;
  const rows = cache.plans.map((p) => el("tr", {}, el("td", {}, p.name), el("td", {}, p.currency),
    el("td", {}, p.rates.map((r) => `${r.gpu_model}: ${r.per_gpu_hour}/GPU-h, ${r.per_gib_hour}/GiB-h`).join("; ")),
    isAdmin() ? el("td", {}, el("button", { type: "button", class: "danger", "aria-label": `Delete plan ${p.name}`, on: { click: () => act(() => api("DELETE", "/v1/plans/" + p.id)) } }, "Delete")) : null));
  $("plan-rows").replaceChildren(...rows);
  document.querySelectorAll(".plan-select").forEach((s) => s.replaceChildren(el("option", { value: "" }, "No plan"), ...cache.plans.map((p) => el("option", { value: p.id }, p.name))));
}

async function loadTenants() {
  cache.tenants = (await api("GET", "/v1/tenants?limit=1000")).tenants;
  const sel = $("assign-tenant");
  sel.replaceChildren(...cache.tenants.map((t) => el("option", { value: t.id }, t.name)));
  if (!isAdmin()) return;
  const rows = [];
  for (const t of cache.tenants) {
    const keys = (await api("GET", `/v1/tenants/${t.id}/keys?limit=1000`)).keys.filter((k) => !k.revoked_at);
    const plan = el("select", { "aria-label": `Plan of ${t.name}`, on: { change: (e) => act(() => api("PATCH", "/v1/tenants/" + t.id, { plan_id: e.target.value })) } },
      el("option", { value: "" }, "No plan"), ...cache.plans.map((p) => el("option", { value: p.id, selected: p.id === t.plan_id }, p.name)));
    const keyList = el("ul", {}, keys.map((k) => el("li", {}, el("code", {}, k.prefix + "…"), ` ${k.label} `,
      el("button", { type: "button", class: "secondary", "aria-label": `Rotate key ${k.id}`, on: { click: () => act(async () => showSecret(t, await api("POST", `/v1/keys/${k.id}/rotate`))) } }, "Rotate"), " ",
      el("button", { type: "button", class: "danger", "aria-label": `Revoke key ${k.id}`, on: { click: () => act(() => api("DELETE", "/v1/keys/" + k.id)) } }, "Revoke"))));
    rows.push(el("tr", {}, el("td", {}, t.name), el("td", {}, el("code", {}, t.id)), el("td", {}, plan), el("td", {}, keyList),
      el("td", {},
        el("button", { type: "button", "aria-label": `Create key for ${t.name}`, on: { click: () => act(async () => showSecret(t, await api("POST", `/v1/tenants/${t.id}/keys`, {}))) } }, "New key"), " ",
        el("button", { type: "button", class: "danger", "aria-label": `Delete tenant ${t.name}`, on: { click: () => confirm(`Delete tenant ${t.name}? Its keys and assignments are revoked.`) && act(() => api("DELETE", "/v1/tenants/" + t.id)) } }, "Delete"))));
  }
  $("tenant-rows").replaceChildren(...rows);
}

function showSecret(t, r) {
  $("new-secret").replaceChildren(el("p", {}, `New key for ${t.name} (shown once, copy it now): `, el("code", { id: "secret-value" }, r.secret)));
}

async function loadAssignments() {
  const list = (await api("GET", "/v1/assignments?limit=1000")).assignments;
  const rows = list.map((a) => {
    const gpu = cache.gpus.find((g) => g.uuid === a.gpu_uuid);
    const label = gpu ? `${gpu.server_name} #${gpu.index} ${gpu.name}` : a.gpu_uuid;
    const cells = [el("td", {}, tenantName(a.tenant_id)), el("td", {}, label, " ", el("code", {}, a.gpu_uuid)),
      el("td", { class: "num" }, a.memory_limit_mib), el("td", { class: "num" }, a.compute_share.toFixed(2)),
      el("td", {}, a.priority + (a.share_cap ? " (capped)" : ""))];
    if (isAdmin()) {
      const move = el("select", { "aria-label": `Move assignment of ${tenantName(a.tenant_id)} to GPU` },
        ...cache.gpus.map((g) => el("option", { value: g.uuid, selected: g.uuid === a.gpu_uuid }, `${g.server_name} #${g.index}`)));
      const mem = el("input", { type: "number", min: 1, value: a.memory_limit_mib, size: 7, "aria-label": "New memory limit (MiB)" });
      const share = el("input", { type: "number", min: 0.01, max: 1, step: 0.01, value: a.compute_share, "aria-label": "New compute share" });
      cells.push(el("td", {}, move, mem, share,
        el("button", { type: "button", class: "secondary", on: { click: () => act(() => api("PATCH", "/v1/assignments/" + a.id, { gpu_uuid: move.value, memory_limit_mib: Number(mem.value), compute_share: Number(share.value) })) } }, "Save"), " ",
        el("button", { type: "button", class: "danger", "aria-label": `Revoke assignment of ${tenantName(a.tenant_id)} on ${a.gpu_uuid}`, on: { click: () => act(() => api("DELETE", "/v1/assignments/" + a.id)) } }, "Revoke")));
    }
    return el("tr", { "data-assignment": a.id }, ...cells);
  });
  $("assign-rows").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6 }, "No assignments."))]));
}

function chart(tenants) {
  const w = 640, bar = 22, gap = 8, left = 160, h = Math.max(1, tenants.length) * (bar + gap) + 10;
  const max = Math.max(1e-9, ...tenants.map((t) => t.cost));
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`); svg.setAttribute("width", w); svg.style.maxWidth = "100%"; svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Cost per tenant: " + tenants.map((t) => `${t.tenant_name} ${t.cost.toFixed(2)} ${t.currency}`).join(", "));
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; svg.append(e); return e; };
  tenants.forEach((t, i) => {
    const y = 5 + i * (bar + gap), bw = Math.max(1, (w - left - 110) * (t.cost / max));
    add("text", { x: left - 8, y: y + bar * 0.7, "text-anchor": "end", "font-size": 13 }, t.tenant_name);
    const r = add("rect", { x: left, y, width: bw, height: bar, fill: "#0b5cad", rx: 3 });
    const title = document.createElementNS(ns, "title"); title.textContent = `${t.tenant_name}: ${t.gpu_hours.toFixed(2)} GPU-hours, ${t.cost.toFixed(2)} ${t.currency}`; r.append(title);
    add("text", { x: left + bw + 6, y: y + bar * 0.7, "font-size": 13 }, `${t.cost.toFixed(2)} ${t.currency}`);
  });
  return svg;
}

async function loadUsage() {
  const days = Number($("usage-days").value), now = Math.floor(Date.now() / 1000);
  const u = await api("GET", `/v1/usage?from=${now - days * 86400}&to=${now + 300}`);
  $("usage-chart").replaceChildren(chart(u.tenants));
  $("usage-rows").replaceChildren(...u.tenants.map((t) => el("tr", {}, el("td", {}, t.tenant_name),
    el("td", { class: "num" }, t.gpu_hours.toFixed(2)), el("td", { class: "num" }, (t.gpu_busy_seconds / 3600).toFixed(2)),
    el("td", { class: "num" }, t.memory_gib_hours.toFixed(2)),
    el("td", { class: "num" }, fmtBytes(t.bytes_moved)), el("td", { class: "num" }, `${t.cost.toFixed(2)} ${t.currency}`))));
}

async function loadSessions() {
  const s = (await api("GET", "/v1/sessions?limit=1000")).sessions.sort((a, b) => b.created_at - a.created_at).slice(0, 100);
  $("session-rows").replaceChildren(...s.map((x) => el("tr", {}, el("td", {}, el("code", {}, x.id)), el("td", {}, tenantName(x.tenant_id)),
    el("td", {}, x.gpu_uuids.join(", ")), el("td", {}, x.status + (x.end_reason ? ` (${x.end_reason})` : "")), el("td", {}, fmtTime(x.created_at)),
    el("td", {}, x.status === "active" ? el("button", { type: "button", class: "danger", "aria-label": `End session ${x.id}`, on: { click: () => act(() => api("DELETE", "/v1/sessions/" + x.id)) } }, "End") : ""))));
}

async function act(f, okMsg) {
  try { await f(); say(okMsg || "Done.", true); await refreshAll(); } catch (e) { say(e.message); }
}

$("signin-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", () => signOut("Signed out."));
$("tenant-form").addEventListener("submit", (e) => { e.preventDefault(); act(async () => { await api("POST", "/v1/tenants", { name: $("tenant-name").value, plan_id: $("tenant-plan").value || null }); e.target.reset(); }, "Tenant created."); });
$("assign-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const mem = $("assign-mem").value, share = $("assign-share").value;
  act(() => api("POST", "/v1/assignments", { tenant_id: $("assign-tenant").value, gpu_uuid: $("assign-gpu").value,
    memory_limit_mib: mem ? Number(mem) : null, compute_share: share ? Number(share) : null,
    priority: $("assign-priority").value || null, share_cap: $("assign-cap").checked }).then(() => e.target.reset()), "GPU assigned.");
});
$("plan-form").addEventListener("submit", (e) => {
  e.preventDefault();
  act(() => api("POST", "/v1/plans", { name: $("plan-name").value, currency: $("plan-currency").value,
    rates: [{ gpu_model: $("plan-model").value, per_gpu_hour: Number($("plan-gpu-hour").value), per_gib_hour: Number($("plan-gib-hour").value) }] }), "Plan created.");
});
$("usage-form").addEventListener("submit", (e) => { e.preventDefault(); loadUsage().catch((x) => say(x.message)); });
if (token) start().catch(() => signOut());
