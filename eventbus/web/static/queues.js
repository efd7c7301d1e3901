// The queue dashboard: /devtools/queues.json every two seconds, drawn as cards with live sparklines.
// The server sorts the queues worst first (Nagios state, then backlog); the cards follow that order.

import { api, el, toLogin } from "./common.js";

const POLL_MS = 2000;
const COLORS = { OK: "#16a34a", WARNING: "#d97706", CRITICAL: "#dc2626", UNKNOWN: "#64748b" };
const RATE_COLOR = "#4f46e5";
const cards = new Map(); // queue name -> {root, fields, canvas}
const $ = (id) => document.getElementById(id);

function number(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return value.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1) return `${number(value * 1000, 1)} ms`;
  if (value < 120) return `${number(value, 1)} s`;
  return `${number(value / 60, 1)} min`;
}

function rate(value) {
  return value === null || value === undefined ? "–" : `${number(value, value < 10 ? 2 : 0)}/s`;
}

/**
 * A sparkline: series[0] as a filled area in `color`, series[1] (if any) as a line in RATE_COLOR,
 * each scaled to its own maximum.
 */
function drawSpark(canvas, area, line, color) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const plot = (values, fill, stroke) => {
    if (values.length < 2) return;
    const max = Math.max(1e-9, ...values.map((v) => v || 0));
    const x = (i) => (i / (values.length - 1)) * width;
    const y = (v) => height - 2 - ((v || 0) / max) * (height - 4);
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = stroke;
    ctx.stroke();
    if (fill) {
      ctx.lineTo(width, height);
      ctx.lineTo(0, height);
      ctx.closePath();
      ctx.globalAlpha = 0.18;
      ctx.fillStyle = fill;
      ctx.fill();
      ctx.globalAlpha = 1;
    }
  };
  plot(area, color, color);
  if (line) plot(line, null, RATE_COLOR);
}

function metric(label, key) {
  return el("div", {}, el("dt", {}, label), el("dd", { "data-field": key }, "–"));
}

function newCard(name) {
  const fields = {};
  const dl = el("dl", { className: "metrics" },
    metric("Consumers", "consumers"), metric("Consumed", "consume_rate"), metric("Avg time", "average_consume_time"),
    metric("Backlog", "backlog_seconds"), metric("Errors", "errors"), metric("Processed", "processed"));
  const root = el("article", { className: "queue-card", "data-queue": name },
    el("header", {}, el("h3", {}, name), el("span", { className: "chip state", "data-field": "state" })),
    el("p", { className: "reason", "data-field": "reason" }),
    el("div", { className: "depth" }, el("strong", { "data-field": "depth" }, "–"), el("span", {}, "waiting")),
    dl,
    el("canvas", { className: "spark", height: 48, "aria-hidden": "true" }),
    el("p", { className: "foot", "data-field": "stats_age" }));
  for (const node of root.querySelectorAll("[data-field]")) fields[node.dataset.field] = node;
  return { root, fields, canvas: root.querySelector("canvas"), history: [] };
}

function renderQueue(queue) {
  let card = cards.get(queue.name);
  if (!card) {
    card = newCard(queue.name);
    cards.set(queue.name, card);
  }
  const f = card.fields;
  card.root.dataset.state = queue.state;
  f.state.dataset.state = queue.state;
  f.state.textContent = queue.state;
  f.reason.textContent = queue.reason;
  f.reason.hidden = !queue.reason;
  f.depth.textContent = number(queue.depth);
  f.consumers.textContent = number(queue.consumers);
  f.consumers.classList.toggle("bad", queue.consumers === 0);
  f.consume_rate.textContent = rate(queue.consume_rate);
  f.average_consume_time.textContent = seconds(queue.average_consume_time);
  f.backlog_seconds.textContent = seconds(queue.backlog_seconds);
  f.errors.textContent = number(queue.errors);
  f.errors.classList.toggle("bad", queue.errors > 0);
  f.processed.textContent = queue.failed ? `${number(queue.processed)} (${number(queue.failed)} failed)`
    : number(queue.processed);
  f.stats_age.textContent = queue.stats_age === null ? "no stats from a worker yet"
    : `worker stats ${seconds(queue.stats_age)} old`;
  card.history = queue.history;
  drawCard(card);
  return card.root;
}

function drawCard(card) {
  const state = card.root.dataset.state;
  drawSpark(card.canvas, card.history.map((h) => h[1]), card.history.map((h) => h[2]), COLORS[state]);
}

let tornadoHistory = [];

function renderTornado(t) {
  $("tornado-id").textContent = t.server_id;
  $("t-connected").textContent = number(t.connected_clients);
  $("t-connected-detail").textContent = `${number(t.websockets)} websocket · ${number(t.long_polls)} long-poll`;
  $("t-queues").textContent = number(t.live_queues);
  $("t-delivered").textContent = `${number(t.events_delivered)} events delivered`;
  $("t-rate").textContent = rate(t.events_per_second);
  const waiting = t.queues.reduce((sum, q) => sum + q.depth, 0);
  $("t-notify").textContent = number(waiting);
  $("t-notify-detail").textContent = t.queues.map((q) => `${q.name} ${number(q.depth)}`).join(" · ");
  tornadoHistory = t.history;
  drawTornado();
}

function drawTornado() {
  drawSpark($("t-chart"), tornadoHistory.map((h) => h[1]), null, RATE_COLOR);
}

function renderOverall(queues) {
  const counts = {};
  for (const queue of queues) counts[queue.state] = (counts[queue.state] || 0) + 1;
  const worst = ["CRITICAL", "WARNING", "UNKNOWN"].find((s) => counts[s]) || "OK";
  const overall = $("overall");
  overall.dataset.state = worst;
  overall.textContent = worst === "OK" ? `All ${queues.length} queues OK`
    : ["CRITICAL", "WARNING", "UNKNOWN"].filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(" · ");
}

async function refresh() {
  if (document.hidden) return;
  let feed;
  try {
    feed = await api("GET", "/devtools/queues.json");
  } catch (error) {
    if (error.status === 401) return toLogin();
    $("overall").dataset.state = "UNKNOWN";
    $("overall").textContent = `No answer: ${error.message}`;
    return;
  }
  $("broker-error").hidden = !feed.broker_error;
  $("broker-error").textContent = feed.broker_error ? `Cannot read the queues: ${feed.broker_error}` : "";
  renderOverall(feed.queues);
  renderTornado(feed.tornado);
  const grid = $("queues");
  const seen = new Set();
  feed.queues.forEach((queue, index) => {
    const root = renderQueue(queue);
    seen.add(queue.name);
    if (grid.children[index] !== root) grid.insertBefore(root, grid.children[index] || null);
  });
  for (const [name, card] of cards) {
    if (!seen.has(name)) {
      card.root.remove();
      cards.delete(name);
    }
  }
  $("updated").textContent = `updated ${new Date(feed.time * 1000).toLocaleTimeString()}`;
  document.body.dataset.loaded = "true";
}

window.addEventListener("resize", () => {
  for (const card of cards.values()) drawCard(card);
  drawTornado();
});
document.addEventListener("visibilitychange", refresh);
refresh();
setInterval(refresh, POLL_MS);
