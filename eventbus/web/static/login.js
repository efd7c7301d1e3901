// The login page: development users (one click each, development mode only) and the email + API key form.
import { api, el, initials, hue } from "./common.js";

const errorBox = document.getElementById("login-error");

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

/** Where to go after logging in: the page that sent us here, if it is one of this site's. */
function nextUrl() {
  const next = new URL(new URLSearchParams(location.search).get("next") || "/", location.origin);
  return next.origin === location.origin ? next.pathname + next.search + next.hash : "/";
}

async function logIn(path, params) {
  showError("");
  try {
    await api("POST", path, params);
    location.assign(nextUrl());
  } catch (error) {
    showError(error.message);
  }
}

async function showDevUsers() {
  let users;
  try {
    ({ users } = await api("GET", "/accounts/login/dev"));
  } catch {
    return; // not development mode: only the API key form
  }
  const list = document.getElementById("dev-users");
  for (const user of users) {
    const avatar = el("span", { className: "avatar", "aria-hidden": "true" }, initials(user.full_name));
    avatar.style.setProperty("--hue", hue(user.user_id));
    const button = el("button", { type: "button", className: "dev-user", "data-email": user.email },
      avatar, el("span", { className: "who" }, el("strong", {}, user.full_name), el("small", {}, user.email)));
    button.addEventListener("click", () => logIn("/accounts/login/dev", { email: user.email }));
    list.append(el("li", {}, button));
  }
  document.getElementById("dev-login").hidden = users.length === 0;
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  logIn("/accounts/login", { email: form.email.value.trim(), api_key: form.api_key.value.trim() });
});

showDevUsers();
