// The live chat page: streams and people on the left, messages in the middle, the compose box below.
//
// Message content is the server's rendered Markdown (sanitized there) and is the only thing inserted as
// HTML; names, topics, streams and every other string go in as text.

import { api, el, hue, initials, page, toLogin } from "./common.js";
import { PollTransport, QueueState, SocketTransport } from "./transport.js";

/** How often this page reports its own presence, in milliseconds. */
const PRESENCE_INTERVAL = 50_000;
/** A presence report older than this (seconds) means offline: the server's server_presence_offline_threshold. */
const OFFLINE_THRESHOLD = 140;
/** Zulip's typing protocol (the server's server_typing_* values), in milliseconds: a start again every
 * TYPING_STARTED_WAIT while typing, a stop after TYPING_STOPPED_WAIT without input, and a typist not heard of
 * for TYPING_STARTED_EXPIRY is forgotten. */
const TYPING_STARTED_WAIT = 10_000;
const TYPING_STOPPED_WAIT = 5_000;
const TYPING_STARTED_EXPIRY = 15_000;
/** Messages of one sender closer than this (seconds) are shown as one group. */
const GROUP_SECONDS = 300;

const state = {
  me: null,
  users: new Map(), // user_id -> {user_id, email, full_name}
  streams: [], // [{stream_id, name}]
  messages: new Map(), // id -> message as shown (see toMessage)
  presence: new Map(), // user_id -> {status, timestamp}
  typists: new Map(), // user_id -> timer that forgets them
  typing: null, // what this page told the server it types to: {key, request, sentAt, stopTimer}
  narrow: { kind: "all" }, // {kind: "all"} | {kind: "stream", name} | {kind: "private"}
  historyLoaded: false,
  unseen: 0,
  lastInput: Date.now(),
};
let transport = null;

const $ = (id) => document.getElementById(id);

// -- messages ------------------------------------------------------------------------------------------

/** A message from the history API or a message event, in one shape: html is set only for rendered content. */
function toMessage(raw, flags) {
  const html = raw.rendered_content ?? (raw.content_type === "text/html" ? raw.content : null);
  return {
    id: raw.id, senderId: raw.sender_id, senderName: raw.sender_full_name, type: raw.type,
    recipient: raw.display_recipient, topic: raw.subject, timestamp: raw.timestamp,
    html, text: html === null ? raw.content : null, flags: flags || raw.flags || [],
  };
}

function visible(message) {
  const narrow = state.narrow;
  if (narrow.kind === "stream") return message.type === "stream" && message.recipient === narrow.name;
  if (narrow.kind === "private") return message.type === "private";
  return true;
}

/** "#Denmark › plans", or "You and Iago" for a private message. */
function recipientLabel(message) {
  if (message.type === "stream") return [`#${message.recipient}`, message.topic];
  const others = message.recipient.filter((user) => user.id !== state.me.user_id).map((user) => user.full_name);
  return [others.length ? `You and ${others.join(", ")}` : "You", null];
}

function sameConversation(a, b) {
  return a.type === b.type && a.topic === b.topic && JSON.stringify(a.recipient) === JSON.stringify(b.recipient);
}

function formatTime(timestamp) {
  return new Date(timestamp * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function avatar(userId, name) {
  const node = el("span", { className: "avatar", "aria-hidden": "true" }, initials(name));
  node.style.setProperty("--hue", hue(userId));
  return node;
}

/** The list items showing ``message`` after ``previous`` (a recipient bar when the conversation changes). */
function messageNodes(message, previous) {
  const nodes = [];
  const newConversation = !previous || !sameConversation(previous, message);
  if (newConversation) {
    const [where, topic] = recipientLabel(message);
    nodes.push(el("li", { className: `recipient-bar ${message.type}` },
      el("span", { className: "where" }, where), topic && el("span", { className: "topic" }, topic)));
  }
  const grouped = !newConversation && previous.senderId === message.senderId
    && message.timestamp - previous.timestamp < GROUP_SECONDS;
  const content = el("div", { className: "content" });
  if (message.html !== null) {
    content.innerHTML = message.html; // rendered and sanitized by the server's Markdown renderer
    for (const mention of content.querySelectorAll(".user-mention")) {
      if (mention.dataset.userId === String(state.me.user_id)) mention.classList.add("me");
    }
  } else {
    content.textContent = message.text;
  }
  const classes = ["message"];
  if (grouped) classes.push("grouped");
  if (message.flags.includes("mentioned")) classes.push("mentioned");
  if (message.senderId === state.me.user_id) classes.push("mine");
  nodes.push(el("li", { className: classes.join(" "), "data-id": message.id, "data-sender-id": message.senderId },
    grouped ? null : avatar(message.senderId, message.senderName),
    el("div", { className: "body" },
      grouped ? null : el("div", { className: "meta" },
        el("span", { className: "sender" }, message.senderName),
        el("time", { dateTime: new Date(message.timestamp * 1000).toISOString() }, formatTime(message.timestamp))),
      content)));
  return nodes;
}

function nearBottom() {
  const scroller = $("message-scroller");
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 120;
}

function scrollToBottom() {
  const scroller = $("message-scroller");
  scroller.scrollTop = scroller.scrollHeight;
}

function shownMessages() {
  return [...state.messages.values()].filter(visible).sort((a, b) => a.id - b.id);
}

function renderMessages() {
  const list = $("messages");
  let previous = null;
  const nodes = [];
  for (const message of shownMessages()) {
    nodes.push(...messageNodes(message, previous));
    previous = message;
  }
  list.replaceChildren(...nodes);
  $("empty").hidden = nodes.length > 0;
  scrollToBottom();
}

/** Add messages (each once, by id); appended in place when they come after everything shown. */
function addMessages(messages) {
  const fresh = messages.filter((message) => !state.messages.has(message.id));
  if (!fresh.length) return;
  const lastShown = shownMessages().at(-1);
  for (const message of fresh) state.messages.set(message.id, message);
  const stickToBottom = nearBottom() || fresh.some((message) => message.senderId === state.me.user_id);
  fresh.sort((a, b) => a.id - b.id);
  if (lastShown && fresh[0].id < lastShown.id) {
    renderMessages();
    return;
  }
  let previous = lastShown;
  const list = $("messages");
  for (const message of fresh.filter(visible)) {
    list.append(...messageNodes(message, previous));
    previous = message;
  }
  $("empty").hidden = list.childElementCount > 0;
  if (stickToBottom) scrollToBottom();
}

async function loadHistory() {
  const { messages } = await api("GET", "/json/messages", { anchor: "newest", num_before: 50, num_after: 0 });
  addMessages(messages.map((message) => toMessage(message)));
  state.historyLoaded = true;
}

// -- events --------------------------------------------------------------------------------------------

function onEvents(events) {
  const messages = [];
  for (const event of events) {
    if (event.type === "message") {
      messages.push(toMessage(event.message, event.flags));
    } else if (event.type === "presence") {
      onPresence(event);
    } else if (event.type === "typing") {
      onTyping(event);
    }
  }
  if (messages.length) {
    addMessages(messages);
    if (document.hidden) {
      state.unseen += messages.filter((message) => message.senderId !== state.me.user_id).length;
      document.title = state.unseen ? `(${state.unseen}) eventbus` : "eventbus";
    }
  }
}

function onReady(fresh) {
  if (fresh || !state.historyLoaded) {
    loadHistory().catch((error) => console.warn("eventbus: loading messages failed:", error.message));
  }
}

function onStatus(connection) {
  const status = $("status");
  const labels = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…" };
  status.dataset.state = connection;
  const detail = el("span", { className: "detail" }, ` · ${transport.name}`);
  status.replaceChildren(el("span", {}, labels[connection], detail));
  document.body.dataset.connection = connection;
}

function startTransport(Kind) {
  transport = new Kind(new QueueState(state.me.user_id), { onReady, onEvents, onStatus, onFallback });
  document.body.dataset.transport = transport.name;
  onStatus("connecting");
  transport.start();
}

function onFallback() {
  console.warn("eventbus: websockets do not connect here; falling back to long-polling");
  startTransport(PollTransport);
}

// -- presence ------------------------------------------------------------------------------------------

/**
 * A presence event: {"type": "presence", "user_id", "presence": {client: {status, timestamp}}}.
 * The server sends one when a user's status changes ("active", "idle", "offline"): the last one holds.
 */
function onPresence(event) {
  for (const report of Object.values(event.presence || {})) {
    presenceSeen(event.user_id, report.status, report.timestamp ?? event.server_timestamp);
  }
}

function presenceSeen(userId, status, timestamp) {
  const known = state.presence.get(userId);
  if (known && known.timestamp > timestamp) return;
  state.presence.set(userId, { status: ["active", "idle"].includes(status) ? status : "offline", timestamp });
  renderPeople();
}

function presenceOf(userId) {
  return state.presence.get(userId)?.status || "offline";
}

/** Everyone's presence at start (GET /json/realm/presence): a report older than the threshold is offline. */
async function loadPresence() {
  const { presences, server_timestamp: now } = await api("GET", "/json/realm/presence");
  const byEmail = new Map([...state.users.values()].map((user) => [user.email, user.user_id]));
  for (const [email, clients] of Object.entries(presences)) {
    const userId = byEmail.get(email);
    const { status, timestamp } = clients.aggregated;
    if (userId !== undefined) presenceSeen(userId, now - timestamp > OFFLINE_THRESHOLD ? "offline" : status, timestamp);
  }
}

/** Tell the server this user is here (POST /json/users/me/presence), while the server has that endpoint. */
async function reportPresence() {
  const status = document.hidden || Date.now() - state.lastInput > PRESENCE_INTERVAL * 3 ? "idle" : "active";
  try {
    await api("POST", "/json/users/me/presence", { status, new_user_input: status === "active" });
  } catch (error) {
    if (error.status === 404) return; // no presence endpoint on this server: only others' events show
  }
  setTimeout(reportPresence, PRESENCE_INTERVAL);
}

// -- typing --------------------------------------------------------------------------------------------

/** A typing event: show "X is typing…" until its stop, or until no start came for a while. */
function onTyping(event) {
  const userId = event.sender.user_id;
  if (userId === state.me.user_id) return;
  clearTimeout(state.typists.get(userId));
  if (event.op === "start") {
    state.typists.set(userId, setTimeout(() => forgetTypist(userId), TYPING_STARTED_EXPIRY));
  } else {
    state.typists.delete(userId);
  }
  renderTyping();
}

function forgetTypist(userId) {
  state.typists.delete(userId);
  renderTyping();
}

function renderTyping() {
  const names = [...state.typists.keys()].map((userId) => state.users.get(userId)?.full_name || "Someone");
  const indicator = $("typing");
  indicator.hidden = names.length === 0;
  indicator.textContent = names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
}

/** The typing request for what is being composed (POST /json/typing's fields), or null when it names nobody. */
function typingTarget() {
  const request = composeRequest();
  if (request.type === "stream") {
    const stream = state.streams.find((s) => s.name === request.to);
    return stream && request.topic ? { type: "stream", stream_id: stream.stream_id, topic: request.topic } : null;
  }
  const byEmail = new Map([...state.users.values()].map((user) => [user.email.toLowerCase(), user.user_id]));
  const ids = JSON.parse(request.to).map((email) => byEmail.get(email.toLowerCase())).filter((id) => id);
  return ids.length ? { type: "direct", to: JSON.stringify(ids) } : null;
}

function sendTyping(op, target) {
  api("POST", "/json/typing", { op, ...target }).catch((error) => console.warn("eventbus: typing:", error.message));
}

/** Input in the compose box: a start now and every TYPING_STARTED_WAIT while it goes on (a new conversation
 * stops the old one first), a stop after TYPING_STOPPED_WAIT without input. */
function onComposeInput() {
  const target = $("compose-content").value.trim() ? typingTarget() : null;
  const key = target && JSON.stringify(target);
  const typing = state.typing;
  if (typing && typing.key !== key) stopTyping();
  if (!target) return;
  const now = Date.now();
  if (!state.typing) {
    state.typing = { key, target, sentAt: 0, stopTimer: null };
  }
  if (now - state.typing.sentAt >= TYPING_STARTED_WAIT) {
    state.typing.sentAt = now;
    sendTyping("start", target);
  }
  clearTimeout(state.typing.stopTimer);
  state.typing.stopTimer = setTimeout(stopTyping, TYPING_STOPPED_WAIT);
}

function stopTyping() {
  const typing = state.typing;
  if (!typing) return;
  state.typing = null;
  clearTimeout(typing.stopTimer);
  sendTyping("stop", typing.target);
}

// -- the sidebar ---------------------------------------------------------------------------------------

function navItem(label, narrow, extraClass) {
  const active = state.narrow.kind === narrow.kind && state.narrow.name === narrow.name;
  const button = el("button", { type: "button", className: `nav-item ${extraClass || ""}`,
    "aria-current": active ? "true" : null }, label);
  button.addEventListener("click", () => setNarrow(narrow));
  return el("li", {}, button);
}

function renderStreams() {
  $("streams").replaceChildren(
    navItem("All messages", { kind: "all" }, "all"),
    ...state.streams.map((stream) => navItem(
      [el("span", { className: "hash", "aria-hidden": "true" }, "#"), stream.name],
      { kind: "stream", name: stream.name }, "stream")),
    navItem("Private messages", { kind: "private" }, "private"));
}

function renderPeople() {
  const order = { active: 0, idle: 1, offline: 2 };
  const people = [...state.users.values()].sort((a, b) => (order[presenceOf(a.user_id)] - order[presenceOf(b.user_id)])
    || a.full_name.localeCompare(b.full_name));
  $("people").replaceChildren(...people.map((user) => {
    const presence = user.user_id === state.me.user_id ? "active" : presenceOf(user.user_id);
    const titles = { active: "Active now", idle: "Idle", offline: "Offline" };
    const button = el("button", { type: "button", className: "nav-item person", "data-user-id": user.user_id,
      "data-presence": presence, title: `${user.email} · ${titles[presence]}` },
    avatar(user.user_id, user.full_name),
    el("span", { className: "name" }, user.full_name, user.user_id === state.me.user_id ? " (you)" : ""),
    el("span", { className: "presence-dot", "aria-label": titles[presence] }));
    button.addEventListener("click", () => {
      setNarrow({ kind: "private" });
      composeTo({ kind: "private", emails: [user.email] });
    });
    return el("li", {}, button);
  }));
}

function setNarrow(narrow) {
  state.narrow = narrow;
  const titles = { all: "All messages", private: "Private messages" };
  $("narrow-title").textContent = narrow.kind === "stream" ? `#${narrow.name}` : titles[narrow.kind];
  if (narrow.kind === "stream") composeTo({ kind: "stream", name: narrow.name });
  renderStreams();
  renderMessages();
  closeSidebar();
}

function openSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  $("menu-toggle").setAttribute("aria-expanded", String(open));
  $("scrim").hidden = !open;
}

function closeSidebar() {
  openSidebar(false);
}

/** Links in messages to a stream ("/#narrow/stream/5-Denmark") narrow the view to it. */
function onHashChange() {
  const match = location.hash.match(/^#narrow\/stream\/(\d+)/);
  const stream = match && state.streams.find((s) => s.stream_id === Number(match[1]));
  if (stream) setNarrow({ kind: "stream", name: stream.name });
}

// -- compose -------------------------------------------------------------------------------------------

function renderComposeTargets() {
  const select = $("compose-target");
  select.replaceChildren(
    ...state.streams.map((stream) => el("option", { value: `stream:${stream.name}` }, `#${stream.name}`)),
    el("option", { value: "private" }, "Private message"));
  onTargetChange();
}

function composeTo(target) {
  $("compose-target").value = target.kind === "stream" ? `stream:${target.name}` : "private";
  if (target.emails) $("compose-recipients").value = target.emails.join(", ");
  onTargetChange();
  $("compose-content").focus();
}

function onTargetChange() {
  const isPrivate = $("compose-target").value === "private";
  $("compose-topic").hidden = isPrivate;
  $("compose-recipients").hidden = !isPrivate;
}

function showComposeError(message) {
  $("compose-error").textContent = message;
  $("compose-error").hidden = !message;
}

/** The request for the message_sender, as Zulip's send-message fields. */
function composeRequest() {
  const content = $("compose-content").value;
  const target = $("compose-target").value;
  if (target === "private") {
    const emails = $("compose-recipients").value.split(",").map((email) => email.trim()).filter(Boolean);
    return { type: "private", to: JSON.stringify(emails), content };
  }
  return { type: "stream", to: target.slice("stream:".length), topic: $("compose-topic").value.trim(), content };
}

async function send(event) {
  event.preventDefault();
  const request = composeRequest();
  if (!request.content.trim()) return;
  if (request.type === "stream" && !request.topic) {
    showComposeError("Give the message a topic.");
    $("compose-topic").focus();
    return;
  }
  const button = $("compose-send");
  button.disabled = true;
  showComposeError("");
  try {
    const response = await transport.send(request);
    if (response.result === "success") {
      $("compose-content").value = "";
      stopTyping();
    } else {
      showComposeError(response.msg || "The message was not sent.");
    }
  } finally {
    button.disabled = false;
    $("compose-content").focus();
  }
}

// -- start ---------------------------------------------------------------------------------------------

async function main() {
  let me;
  let members;
  let streams;
  try {
    [me, { members }, { subscriptions: streams }] = await Promise.all([
      api("GET", "/json/users/me"), api("GET", "/json/users"), api("GET", "/json/users/me/subscriptions")]);
  } catch (error) {
    if (error.status === 401) toLogin();
    else onStatusError(error);
    return;
  }
  state.me = me;
  for (const user of members.filter((member) => member.is_active)) state.users.set(user.user_id, user);
  state.streams = streams;
  $("me").replaceChildren(avatar(me.user_id, me.full_name), el("span", { className: "name" }, me.full_name));
  renderStreams();
  renderPeople();
  renderComposeTargets();
  if (streams.length) $("compose-topic").value = "general";

  $("compose").addEventListener("submit", send);
  $("compose-target").addEventListener("change", onTargetChange);
  $("compose-content").addEventListener("input", onComposeInput);
  $("compose-content").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("compose").requestSubmit();
    }
  });
  $("menu-toggle").addEventListener("click", () => openSidebar(!document.body.classList.contains("sidebar-open")));
  $("scrim").addEventListener("click", closeSidebar);
  for (const button of document.querySelectorAll(".logout")) {
    button.addEventListener("click", async () => {
      page.leaving = true; // the logout closes this page's socket too: that is no reason to go elsewhere
      await api("POST", "/accounts/logout").catch(() => null);
      sessionStorage.clear();
      location.assign("/login");
    });
  }
  window.addEventListener("hashchange", onHashChange);
  $("messages").addEventListener("click", (event) => {
    const link = event.target.closest("a.stream[data-stream-id]");
    const stream = link && state.streams.find((s) => s.stream_id === Number(link.dataset.streamId));
    if (stream) {
      event.preventDefault(); // stay on this page (and its ?transport=)
      setNarrow({ kind: "stream", name: stream.name });
    }
  });
  for (const kind of ["keydown", "pointerdown"]) {
    window.addEventListener(kind, () => { state.lastInput = Date.now(); }, { passive: true });
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      state.unseen = 0;
      document.title = "eventbus";
    }
  });

  const wanted = new URLSearchParams(location.search).get("transport");
  startTransport(wanted === "longpoll" || !("WebSocket" in window) ? PollTransport : SocketTransport);
  loadPresence().catch((error) => console.warn("eventbus: loading presence failed:", error.message));
  reportPresence();
}

function onStatusError(error) {
  const status = $("status");
  status.dataset.state = "reconnecting";
  status.textContent = `Cannot load: ${error.message}`;
}

main();
