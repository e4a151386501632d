// The console: sign in with an API user, then the cluster, agents and groups from the node's API,
// refreshed every 5 s. Plain DOM, no framework, no build step: the node embeds this file.
"use strict";

const state = { offset: 0, limit: 50, sort: "+id", timer: null };
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem("wmn-token"); }

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (r.status === 401) { signOut(); throw new Error("signed out"); }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null || text === "" ? "-" : String(text);
  if (cls) td.className = cls;
  return td;
}

function row(cells) {
  const tr = document.createElement("tr");
  cells.forEach((c) => tr.appendChild(c));
  return tr;
}

function badge(status) {
  const td = document.createElement("td");
  const b = document.createElement("span");
  b.className = "badge " + (status || "");
  b.textContent = status || "-";
  td.appendChild(b);
  return td;
}

function bars(el, pairs) {
  el.replaceChildren();
  const max = Math.max(1, ...pairs.map((p) => p[1]));
  for (const [label, value] of pairs) {
    const line = document.createElement("div");
    line.className = "bar";
    const name = document.createElement("span");
    name.textContent = label;
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = (value / max) * 60 + "%";
    const n = document.createElement("span");
    n.textContent = value;
    line.append(name, fill, n);
    el.appendChild(line);
  }
}

async function loadNodes() {
  const [nodes, health] = await Promise.all([api("/cluster/nodes"), api("/cluster/actors")]);
  const byName = {};
  for (const h of health.data.affected_items) byName[h.name] = h;
  const body = $("nodes").querySelector("tbody");
  body.replaceChildren();
  const select = $("filter-node");
  const chosen = select.value;
  select.replaceChildren(new Option("any", ""));
  for (const n of nodes.data.affected_items) {
    const h = byName[n.name] || { actors: [], connected: false };
    const actors = h.actors || [];
    const restarts = actors.reduce((s, a) => s + (a.restarts || 0), 0);
    const failing = actors.filter((a) => a.state !== "running" && a.state !== "starting");
    const sync = actors.find((a) => a.name === "Integrity" && a.end === "worker");
    const inSync = sync && sync.details ? (sync.details.in_sync ? "in sync" : "syncing") : (n.type === "master" ? "source" : "-");
    const tr = row([
      cell(n.name), cell(n.type), cell(n.version), cell(n.address), cell(n.connected_since),
      cell(n.last_keepalive), cell(inSync),
      cell(actors.length + " actors, " + restarts + " restarts" + (failing.length ? ", " + failing.map((a) => a.name + " " + a.state).join(", ") : "")),
    ]);
    tr.dataset.node = n.name;
    tr.className = failing.length || (n.type === "worker" && h.connected === false) ? "trouble" : "ok";
    body.appendChild(tr);
    select.appendChild(new Option(n.name, n.name));
  }
  select.value = chosen;
}

async function loadSummary() {
  const s = (await api("/agents/summary/status")).data;
  bars($("chart-status"), ["active", "pending", "disconnected", "never_connected"].map((k) => [k, s.connection[k] || 0]));
  bars($("chart-nodes"), Object.entries(s.nodes || {}).map(([node, c]) => [node || "(none)", c.active || 0]));
  // The master's rebalancer: its mode and state, the mean per worker, the moves so far.
  try {
    const b = (await api("/cluster/balance")).data;
    const over = (b.over || []).length ? "; moving agents away from " + b.over.join(", ") : "";
    $("balance").textContent = `rebalance: ${b.mode}, ${b.state}; mean ${Math.round(b.mean)} active agents per worker; ${b.moves} moved in ${b.batches} batches${over}`;
  } catch (e) {
    $("balance").textContent = "rebalance: unknown (" + e.message + ")";
  }
}

async function loadAgents() {
  const q = new URLSearchParams({ offset: state.offset, limit: state.limit, sort: state.sort });
  for (const [key, id] of [["status", "filter-status"], ["node_name", "filter-node"], ["group", "filter-group"], ["search", "filter-search"]]) {
    if ($(id).value) q.set(key, $(id).value);
  }
  const page = (await api("/agents?" + q)).data;
  const body = $("agents-table").querySelector("tbody");
  body.replaceChildren();
  for (const a of page.affected_items) {
    const tr = row([cell(a.id), cell(a.name), cell(a.ip), badge(a.status), cell(a.node_name), cell(a.version),
      cell((a.group || []).join(", ")), cell(a.lastKeepAlive)]);
    tr.dataset.agent = a.id;
    body.appendChild(tr);
  }
  const total = page.total_affected_items;
  $("agents-total").textContent = total + " agents";
  $("page-info").textContent = total ? `${state.offset + 1}-${state.offset + page.affected_items.length} of ${total}` : "none";
  $("page-prev").disabled = state.offset === 0;
  $("page-next").disabled = state.offset + state.limit >= total;
}

async function loadGroups() {
  const groups = (await api("/groups")).data.affected_items;
  const body = $("groups").querySelector("tbody");
  body.replaceChildren();
  const select = $("filter-group");
  const chosen = select.value;
  select.replaceChildren(new Option("any", ""));
  for (const g of groups) {
    let files = "";
    try {
      files = (await api("/groups/" + encodeURIComponent(g.name) + "/files")).data.affected_items.map((f) => f.filename).join(", ");
    } catch (e) { files = "-"; }
    body.appendChild(row([cell(g.name), cell(g.count), cell(files, "files")]));
    select.appendChild(new Option(g.name, g.name));
  }
  select.value = chosen;
}

async function refresh() {
  try {
    await Promise.all([loadNodes(), loadSummary(), loadAgents(), loadGroups()]);
    $("refreshed").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("refreshed").textContent = "refresh failed: " + e.message;
  }
}

function show(signedIn) {
  $("signin").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("signout").hidden = !signedIn;
  clearInterval(state.timer);
  if (signedIn) {
    $("whoami").textContent = sessionStorage.getItem("wmn-user") || "";
    refresh();
    state.timer = setInterval(refresh, 5000);
  } else {
    $("whoami").textContent = "";
  }
}

function signOut() {
  sessionStorage.removeItem("wmn-token");
  show(false);
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const user = $("signin-user").value;
  const r = await fetch("/security/user/authenticate?raw=true", {
    method: "POST",
    headers: { Authorization: "Basic " + btoa(user + ":" + $("signin-password").value) },
  });
  if (!r.ok) {
    $("signin-error").textContent = "Sign-in refused (" + r.status + ")";
    return;
  }
  sessionStorage.setItem("wmn-token", (await r.text()).trim());
  sessionStorage.setItem("wmn-user", user);
  $("signin-error").textContent = "";
  show(true);
});

$("signout").addEventListener("click", signOut);
for (const id of ["filter-status", "filter-node", "filter-group"]) {
  $(id).addEventListener("change", () => { state.offset = 0; loadAgents(); });
}
let searchTimer = null;
$("filter-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { state.offset = 0; loadAgents(); }, 300);
});
$("page-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadAgents(); });
$("page-next").addEventListener("click", () => { state.offset += state.limit; loadAgents(); });
for (const th of document.querySelectorAll("th[data-sort]")) {
  th.addEventListener("click", () => {
    const field = th.dataset.sort;
    const desc = state.sort === "+" + field;
    state.sort = (desc ? "-" : "+") + field;
    for (const other of document.querySelectorAll("th[data-sort]")) other.classList.remove("sorted", "desc");
    th.classList.add("sorted");
    if (desc) th.classList.add("desc");
    state.offset = 0;
    loadAgents();
  });
}

show(Boolean(token()));
