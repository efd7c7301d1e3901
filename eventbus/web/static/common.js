// Shared by the pages: JSON calls to the server and building DOM nodes safely.

/** An error answer of the server ({"result": "error", "code", "msg"}), or a network failure (code NETWORK). */
export class ApiError extends Error {
  constructor(status, code, msg, retryAfter = 0) {
    super(msg);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds to wait before trying again (RATE_LIMIT_HIT), else 0
  }
}

/** The session's CSRF token, which the server sets as the csrftoken cookie; sent back as X-CSRFToken. */
export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

/** Call a JSON endpoint of this server; resolves to the decoded answer, rejects with an ApiError. */
export async function api(method, path, params = {}, { signal } = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    query.set(name, typeof value === "string" ? value : JSON.stringify(value));
  }
  const init = { method, credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() }, signal };
  let url = path;
  if (method === "GET") {
    if ([...query].length) url += "?" + query;
  } else {
    init.body = query;
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "NETWORK", "The server cannot be reached");
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(response.status, "NETWORK", `Unexpected answer (HTTP ${response.status})`);
  }
  if (!response.ok || body.result !== "success") {
    throw new ApiError(response.status, body.code || "BAD_REQUEST", body.msg || `HTTP ${response.status}`,
      Number(body["retry-after"]) || 0);
  }
  return body;
}

/**
 * A new element: el("a", {href: "/", className: "x"}, "text", child).
 * Strings become text nodes, never HTML; properties are set as properties, data-* and aria-* as attributes.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("data-") || name.startsWith("aria-") || name === "role") node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Resolves after ms milliseconds (for backoff between reconnects). */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Set while the page leaves on purpose (logging out): toLogin() then leaves the leaving to it. */
export const page = { leaving: false };

/** A visitor whose session is gone goes to the login page, and comes back here afterwards. */
export function toLogin() {
  if (page.leaving) return;
  page.leaving = true;
  const next = location.pathname + location.search;
  location.assign("/login?" + new URLSearchParams({ next }));
}

/** Two letters for an avatar: "Othello Moor" -> "OM". */
export function initials(name) {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || "?").slice(0, 2);
  return letters.toUpperCase();
}

/** A stable hue for a user id, so each person keeps a colour. */
export function hue(id) {
  return (Number(id) * 137) % 360;
}
