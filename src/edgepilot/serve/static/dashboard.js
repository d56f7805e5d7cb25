// The edgepilot dashboard: polls /dashboard/api/state, draws the latest frame with its boxes, listens to /stream.
"use strict";
const HISTORY = 120;
const dash = window.dashboard = {
  results: {},          // source -> Map(seq -> result message), the last few per source
  history: {fps: [], infer: [], cpu: [], mem: [], temp: []},
  events: [],           // newest first
  resultsReceived: 0, framesDrawn: 0, boxesDrawn: 0, statesRead: 0, lastState: null,
};
const $ = (id) => document.getElementById(id);
const fmt = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d);

function push(name, value) {
  const h = dash.history[name];
  h.push(value === undefined ? null : value);
  if (h.length > HISTORY) h.shift();
  $("v-" + name).textContent = fmt(value, name === "fps" ? 1 : name === "infer" ? 2 : 0);
  drawChart($("c-" + name), h);
}

function drawChart(canvas, values) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.clearRect(0, 0, w, h);
  const known = values.filter((v) => v !== null);
  if (!known.length) return;
  const lo = Math.min(0, ...known), hi = Math.max(...known) * 1.1 || 1;
  g.strokeStyle = "#2563eb"; g.lineWidth = 1.5; g.beginPath();
  let started = false;
  values.forEach((v, i) => {
    if (v === null) { started = false; return; }
    const x = (i / (HISTORY - 1)) * w, y = h - ((v - lo) / (hi - lo)) * (h - 4) - 2;
    if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
  });
  g.stroke();
}

function reading(system, metric, pick) {
  const rs = (system.readings || []).filter((r) => r.metric === metric);
  return rs.length ? pick(rs) : undefined;
}

function renderState(s) {
  dash.lastState = s; dash.statesRead++;
  const p = s.pipeline;
  if (p) {
    $("uptime").textContent = `up ${Math.round(p.uptime_s)} s`;
    push("fps", p.fps);
    push("infer", p.stages_ms && p.stages_ms.infer ? p.stages_ms.infer.p50 : undefined);
    $("counters").textContent = Object.entries(p.counters).map(([k, v]) => `${k} ${v}`).join(" · ");
  } else {
    push("fps", undefined); push("infer", undefined);
    $("counters").textContent = "no pipeline runs in this server";
  }
  const sys = s.system || {};
  push("cpu", reading(sys, "cpu_percent", (rs) => (rs.find((r) => !r.labels.cpu) || rs[0]).value));
  push("mem", reading(sys, "memory_percent", (rs) => rs[0].value));
  push("temp", reading(sys, "temperature_celsius", (rs) => Math.max(...rs.map((r) => r.value))));
  const missing = sys.unavailable || [];
  $("unavailable-box").hidden = !missing.length;
  $("unavailable-summary").textContent = `${missing.length} monitoring source(s) not readable here`;
  $("unavailable").textContent = missing.map((u) => `${u.source}: ${u.detail}`).join("; ");
  const rows = s.models.map((m) => `<tr><td>${esc(m.name)}</td><td>${esc(m.version || "")}</td>` +
    `<td class="${esc(m.state)}">${esc(m.state)}</td><td>${esc(m.reason || "")}</td></tr>`);
  $("models").innerHTML = rows.length ? rows.join("") : '<tr><td colspan="4" class="muted">no models served</td></tr>';
  const select = $("source"), known = new Set([...select.options].map((o) => o.value));
  for (const src of Object.keys(s.frames)) {
    if (!known.has(src)) select.add(new Option(src, src));
  }
  if (!dash.events.length && s.events.length) { dash.events = s.events.slice().reverse(); renderEvents(); }
}

function esc(v) {
  return String(v).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
}

function renderEvents() {
  $("events").innerHTML = dash.events.length ? dash.events.slice(0, 50).map((e) =>
    `<li class="${esc(e.state || "")}">${new Date(e.ts * 1000).toLocaleTimeString()} <b>${esc(e.rule)}</b> ` +
    `${esc(e.state || e.type)} — ${esc(e.message || "")} <span class="muted">(${esc(e.source)} #${e.seq})</span></li>`
  ).join("") : '<li class="muted">none yet</li>';
}

function describe(result) {
  const r = result && result.result;
  if (!r) return result && result.error ? `error: ${result.error}` : "no result";
  if (r.kind === "classification") return r.classes.map((c) => `${c.label} ${fmt(c.score * 100, 1)} %`).join(", ");
  if (r.kind === "detection") return `${r.detections.length} detection(s): ` +
    r.detections.map((d) => `${d.label} ${fmt(d.score * 100, 0)} %`).join(", ");
  return r.kind;
}

async function pollState() {
  try {
    const res = await fetch("/dashboard/api/state", {cache: "no-store"});
    if (res.ok) renderState(await res.json());
  } catch (e) { /* the server restarts: try again on the next tick */ }
  setTimeout(pollState, 1000);
}

let frameBusy = false;
async function pollFrame() {
  const source = $("source").value;
  if (source && !frameBusy) {
    frameBusy = true;
    try {
      const res = await fetch(`/dashboard/api/frame?source=${encodeURIComponent(source)}`, {cache: "no-store"});
      if (res.ok) {
        const seq = Number(res.headers.get("X-Edgepilot-Seq"));
        drawFrame(await createImageBitmap(await res.blob()), source, seq);
      }
    } catch (e) { /* next tick */ }
    frameBusy = false;
  }
  setTimeout(pollFrame, 200);
}

function drawFrame(bitmap, source, seq) {
  const canvas = $("frame"), g = canvas.getContext("2d");
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width; canvas.height = bitmap.height;
  }
  g.drawImage(bitmap, 0, 0);
  const seen = dash.results[source], result = seen && seen.get(seq);
  let boxes = 0;
  if (result && result.result && result.result.kind === "detection") {
    g.lineWidth = Math.max(2, bitmap.width / 320); g.strokeStyle = "#22c55e";
    g.font = `${Math.max(12, bitmap.width / 40)}px system-ui`;
    for (const d of result.result.detections) {
      const [x1, y1, x2, y2] = d.box;
      g.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const label = `${d.label} ${fmt(d.score * 100, 0)}%`, size = parseInt(g.font, 10), top = Math.max(0, y1 - size - 6);
      g.fillStyle = "#14532d"; g.fillRect(x1, top, g.measureText(label).width + 8, size + 6);
      g.fillStyle = "#fff"; g.fillText(label, x1 + 4, top + size + 1);
      boxes++;
    }
  }
  canvas.dataset.seq = seq; canvas.dataset.boxes = boxes;
  dash.framesDrawn++; dash.boxesDrawn += boxes;
  $("result").textContent = result ? `#${seq}: ${describe(result)}` : `#${seq}`;
}

function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${proto}://${location.host}/stream?what=all`);
  ws.onopen = () => { $("connection").textContent = "live"; $("connection").className = "badge ok"; };
  ws.onclose = () => {
    $("connection").textContent = "disconnected"; $("connection").className = "badge bad";
    setTimeout(connect, 2000);
  };
  ws.onmessage = (msg) => {
    const m = JSON.parse(msg.data);
    if (m.type === "error") { $("connection").textContent = m.error; return; }
    if (m.type === "result") {
      dash.resultsReceived++;
      const seen = dash.results[m.source] || (dash.results[m.source] = new Map());
      seen.set(m.seq, m);
      if (seen.size > 64) seen.delete(seen.keys().next().value);
    } else if (m.type === "event" || m.type === "alert") {
      dash.events.unshift(m); renderEvents();
    }
  };
}

pollState(); pollFrame(); connect();
