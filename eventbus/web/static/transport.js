// How the chat page gets its events and sends messages: over the websocket, or by long-polling.
//
// Both keep the event queue's id and the last event id in sessionStorage, so a reconnect (or a reload of
// the tab) resumes the same queue where it left off, also after the server restarted. Events already seen
// are skipped by id. When the server says the queue is gone (BAD_EVENT_QUEUE_ID), a new queue is registered
// and the page is told to reload recent messages (onReady(true)).
//
// A transport calls its handlers:
//   onReady(fresh)        the queue is served; fresh: a new queue, so events before it may be missing
//   onEvents(events)      new events, in order, each once
//   onStatus(state, why)  "connecting" | "live" | "reconnecting"
//   onFallback()          websockets never worked here: switch to long-polling

import { api, ApiError, toLogin } from "./common.js";

/** The server closes a socket with this code when its session ended (logout, deactivation): log in again. */
const SESSION_ENDED = 4401;

/** The queue this tab reads, per user: {queue_id, last_event_id}, or null. */
export class QueueState {
  constructor(userId) {
    this.key = `eventbus.queue.${userId}`;
  }

  load() {
    try {
      return JSON.parse(sessionStorage.getItem(this.key));
    } catch {
      return null;
    }
  }

  save(queueId, lastEventId) {
    sessionStorage.setItem(this.key, JSON.stringify({ queue_id: queueId, last_event_id: lastEventId }));
  }

  clear() {
    sessionStorage.removeItem(this.key);
  }
}

/** How long a sent message may wait for its answer (the server's own limit is 30 s). */
const ANSWER_TIMEOUT_MS = 35_000;

/** Milliseconds to wait before reconnect attempt n (1, 2, ...): 0.5 s doubling to 8 s, with jitter. */
function backoff(n) {
  return Math.min(8000, 500 * 2 ** (n - 1)) * (0.75 + Math.random() / 2);
}

/** What both transports share: the queue state, events in order and once, and the status. */
class Transport {
  constructor(queue, handlers) {
    this.queue = queue;
    this.handlers = handlers;
    this.lastEventId = -1;
    this.queueId = null;
  }

  /** Take the events not seen yet; returns the last event id, or null when there was nothing new. */
  take(events) {
    const fresh = events.filter((event) => event.id > this.lastEventId);
    if (!fresh.length) return null;
    this.lastEventId = fresh[fresh.length - 1].id;
    this.queue.save(this.queueId, this.lastEventId);
    this.handlers.onEvents(fresh);
    return this.lastEventId;
  }

  served(queueId, lastEventId, fresh) {
    this.queueId = queueId;
    this.lastEventId = lastEventId;
    this.queue.save(queueId, lastEventId);
    this.handlers.onStatus("live");
    this.handlers.onReady(fresh);
  }

  /** The session is gone (or the server is down): off to the login page only in the first case. */
  async checkSession() {
    try {
      await api("GET", "/json/users/me");
    } catch (error) {
      if (error.status === 401) toLogin();
    }
  }
}

export class SocketTransport extends Transport {
  name = "websocket";

  constructor(queue, handlers) {
    super(queue, handlers);
    this.ws = null;
    this.nextRequest = 1;
    this.pending = new Map(); // req_id -> {resolve, acked}
    this.failures = 0;
    this.opened = false; // a socket ever opened: failures after that are outages, not a missing feature
    this.timer = null;
    this.shard = null; // the shard the server said owns this user's queues (WRONG_SHARD), for nginx to route by
  }

  start() {
    window.addEventListener("online", () => this.reconnectNow());
    this.connect();
  }

  connect() {
    this.timer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    // nginx routes the socket by the queue it resumes, or by the shard the server named.
    const saved = this.queue.load();
    const route = saved && saved.queue_id ? `?queue_id=${encodeURIComponent(saved.queue_id)}`
      : this.shard !== null ? `?shard=${encodeURIComponent(this.shard)}` : "";
    const ws = new WebSocket(`${scheme}//${location.host}/json/events/websocket${route}`);
    this.ws = ws;
    ws.onopen = () => {
      this.opened = true;
      this.failures = 0;
      const saved = this.queue.load();
      if (saved && saved.queue_id) {
        this.sendFrame({ type: "attach", queue_id: saved.queue_id, last_event_id: saved.last_event_id });
      } else {
        this.register();
      }
    };
    // A socket replaced by a newer one may still say things (say, "detached" when the new one attached):
    // only the current socket is listened to.
    ws.onmessage = (message) => {
      if (this.ws === ws) this.onFrame(JSON.parse(message.data));
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      if (event.code === SESSION_ENDED) {
        this.ws = null;
        toLogin();
      } else {
        this.onClose();
      }
    };
  }

  register() {
    this.lastEventId = -1;
    this.registering = true;
    this.sendFrame({ type: "register", apply_markdown: true });
  }

  sendFrame(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  onFrame(frame) {
    switch (frame.type) {
      case "registered":
        this.registering = false;
        this.misrouted = 0;
        this.served(frame.queue_id, -1, true);
        break;
      case "attached":
        this.misrouted = 0;
        this.served(frame.queue_id, this.queue.load()?.last_event_id ?? -1, false);
        break;
      case "events": {
        const last = this.take(frame.events);
        if (last !== null) this.sendFrame({ type: "ack", last_event_id: last });
        break;
      }
      case "ack": {
        const request = this.pending.get(frame.req_id);
        if (request) request.acked = true;
        break;
      }
      case "response": {
        const request = this.pending.get(frame.req_id);
        this.pending.delete(frame.req_id);
        if (request) request.resolve(frame.response);
        break;
      }
      case "detached": // another connection (a copy of this tab) took the queue: this tab takes a new one
        this.queue.clear();
        this.register();
        break;
      case "error":
        if (frame.code === "WRONG_SHARD") {
          // This user's queues are on another shard: open the socket again, routed there.
          // Only once at once: a server that keeps saying so (no nginx in front) is asked again ever later.
          const ws = this.ws;
          this.shard = frame.shard;
          this.ws = null;
          ws.close();
          this.misrouted = (this.misrouted || 0) + 1;
          this.timer = setTimeout(() => this.connect(), this.misrouted > 1 ? backoff(this.misrouted) : 0);
        } else if (frame.code === "BAD_EVENT_QUEUE_ID") {
          this.queue.clear();
          this.register();
        } else if (frame.req_id !== undefined && this.pending.has(frame.req_id)) {
          // A request the server refused (a rate limit, a malformed request): its sender gets the reason.
          const request = this.pending.get(frame.req_id);
          this.pending.delete(frame.req_id);
          request.resolve({ result: "error", code: frame.code, msg: frame.msg });
        } else if (frame.code === "RATE_LIMIT_HIT" && this.registering) {
          // Too many registrations: try again once the server says it will take one.
          const ws = this.ws;
          setTimeout(() => { if (this.ws === ws) this.register(); }, (Number(frame["retry-after"]) || 1) * 1000);
        } else {
          console.warn("eventbus websocket:", frame.code, frame.msg);
        }
        break;
      default:
        break;
    }
  }

  onClose() {
    this.ws = null;
    for (const request of this.pending.values()) {
      request.resolve(request.acked
        ? { result: "success", msg: "Sent; the confirmation was lost when the connection dropped" }
        : { result: "error", msg: "Not sent: the connection dropped. Send it again." });
    }
    this.pending.clear();
    this.failures += 1;
    if (!this.opened && this.failures >= 3) {
      this.handlers.onFallback();
      return;
    }
    this.handlers.onStatus("reconnecting");
    if (this.failures > 1) this.checkSession();
    this.timer = setTimeout(() => this.connect(), backoff(this.failures));
  }

  reconnectNow() {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.connect();
    }
  }

  /** Submit a message request; resolves to the server's response ({result, msg, id}). */
  send(request) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.resolve({ result: "error", msg: "Not connected; wait a moment and send again." });
    }
    const reqId = `${this.queueId}:${this.nextRequest++}`;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(reqId);
        resolve({ result: "error", msg: "No answer from the server in time; the message may still arrive." });
      }, ANSWER_TIMEOUT_MS);
      const done = (response) => {
        clearTimeout(timer);
        resolve(response);
      };
      this.pending.set(reqId, { resolve: done, acked: false });
      this.sendFrame({ type: "request", req_id: reqId, request });
    });
  }
}

export class PollTransport extends Transport {
  name = "long-polling";

  start() {
    this.wake = null;
    window.addEventListener("online", () => this.wake?.());
    this.run();
  }

  /** Wait before the next try; the browser coming back online cuts it short. */
  pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async run() {
    let failures = 0;
    let first = true; // the first poll on a queue does not wait, so the page knows at once it is served
    for (;;) {
      try {
        let saved = this.queue.load();
        if (!saved || !saved.queue_id) {
          const registered = await api("POST", "/json/register", { apply_markdown: true });
          this.served(registered.queue_id, -1, true);
          saved = this.queue.load();
          first = false;
        }
        this.queueId = saved.queue_id;
        this.lastEventId = Math.max(this.lastEventId, saved.last_event_id);
        const answer = await api("GET", "/json/events",
          { queue_id: saved.queue_id, last_event_id: this.lastEventId, dont_block: first });
        if (!first && !answer.events.length) {
          // A held poll is answered empty only when another poll of the same queue replaced it: a copy of
          // this tab (sessionStorage is copied with it) reads this queue too. This tab takes a new one.
          this.queue.clear();
          continue;
        }
        if (first || failures) this.served(saved.queue_id, this.lastEventId, false);
        first = false;
        failures = 0;
        this.take(answer.events);
      } catch (error) {
        if (error.code === "BAD_EVENT_QUEUE_ID") {
          this.queue.clear();
          this.lastEventId = -1;
          continue;
        }
        if (error.status === 401) {
          toLogin();
          return;
        }
        failures += 1;
        first = true;
        this.handlers.onStatus("reconnecting");
        await this.pause(Math.max(backoff(failures), (error.retryAfter || 0) * 1000));
      }
    }
  }

  async send(request) {
    try {
      return await api("POST", "/json/messages", request);
    } catch (error) {
      if (error instanceof ApiError) return { result: "error", msg: error.message };
      throw error;
    }
  }
}
