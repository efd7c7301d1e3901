"""The web pages in a real browser (Playwright driving Debian's Chromium), and the JSON they read.

Two people chat live, one over the websocket and one over the websocket or
long-polling; the server restarts and both go on without losing or repeating a
message; the queue dashboard shows the queues. Screenshots of every page, at a
laptop's and a phone's size, go to ``artifacts/screenshots/``.

Without /usr/bin/chromium the browser tests are skipped, except in CI
(``CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from eventbus.app import make_app
from eventbus.messages import MessageStore
from eventbus.processors.queues.analytics import AnalyticsStore
from eventbus.processors.runner import WorkerThreads
from eventbus.processors.stats import stats_path
from eventbus.queue import Broker, MemoryBroker
from eventbus.settings import Settings
from eventbus.tornado_events import rate_limit, send_event
from eventbus.tornado_events.server import EventServer
from eventbus.users import User
from eventbus.web import web_handlers
from tests.conftest import wait_for
from tests.eventserver import ServerThread

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

CHROMIUM = Path("/usr/bin/chromium")
#: Debian's Chromium, headless, in a container, talking to nothing but the test server.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
LAPTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                         "has_touch": True}
#: Reconnects back off up to 8 s (+25% jitter); a wait in these tests may span one.
WAIT_MS = 20_000


class WebServer(ServerThread):
    """The event server with the web pages, on a port fixed at construction: a restart keeps the URL."""

    def __init__(self, settings: Settings, broker: Broker, port: int) -> None:
        super().__init__(settings, broker)
        self.port = port

    async def _start(self) -> None:
        self._server = EventServer(self.settings, self.broker)
        self.server.start()
        self._http = HTTPServer(make_app(self.server, extra_handlers=web_handlers(self.server)))
        self._http.listen(self.port, address="127.0.0.1")

    def stop(self) -> None:
        """As a process exit would: websockets close too (an upgraded socket is no longer the HTTP server's)."""
        if self._server is not None and self._thread.is_alive():
            self.call(self._close_sockets)
        super().stop()

    async def _close_sockets(self) -> None:
        assert self.server is not None
        self.server.sockets.close(1012, "server restart")
        deadline = time.monotonic() + 5
        while self.server.sockets and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


@dataclass
class World:
    store: MessageStore
    iago: User
    othello: User
    desdemona: User


@pytest.fixture
def world(event_settings: Settings, users: tuple[User, User]) -> World:
    """Iago, Othello and Desdemona, all in Denmark; Iago and Othello in Verona too."""
    store = MessageStore(event_settings.database)
    iago, othello = users
    desdemona = store.users.create_user("desdemona@example.com", "Desdemona")
    store.create_stream("Denmark", [iago.id, othello.id, desdemona.id])
    store.create_stream("Verona", [iago.id, othello.id])
    return World(store, iago, othello, desdemona)


StartWeb = Callable[..., WebServer]
NewPage = Callable[..., "Page"]


@pytest.fixture
def web(event_settings: Settings, event_broker: MemoryBroker) -> Iterator[StartWeb]:
    """Start the web server in development mode (settings overridden by keyword), always on the same port."""
    sock, port = bind_unused_port()
    sock.close()
    servers: list[WebServer] = []

    def start(**overrides: Any) -> WebServer:
        server = WebServer(event_settings.replace(**{"development": True, **overrides}), event_broker, port)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# -- the browser ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason + ": in CI the browser tests must run", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[NewPage]:
    """New pages, each in a browser context of its own (its own cookies and storage); none may throw."""
    contexts: list[Any] = []
    errors: list[str] = []

    def new_page(device: dict[str, Any] = LAPTOP) -> Page:
        context = browser.new_context(**device)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        return page

    yield new_page
    for context in contexts:
        context.close()
    assert not errors, errors


def expect(target: Any) -> Any:
    from playwright.sync_api import expect

    return expect(target)


def dev_login(page: Page, server: WebServer, user: User, path: str = "/") -> Page:
    """Log in by clicking the user on the development login page; wait until the chat is live."""
    page.goto(server.url("/login?" + urllib.parse.urlencode({"next": path})))
    page.click(f"button.dev-user[data-email='{user.email}']")
    page.wait_for_url(server.url(path))
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    return page


def key_login(page: Page, server: WebServer, user: User, path: str) -> Page:
    """Go to ``path``, get sent to /login, log in with email and API key, come back to ``path``."""
    page.goto(server.url(path))
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("#email", user.email)
    page.fill("#api-key", user.api_key)
    page.click("#key-form button[type=submit]")
    page.wait_for_url(server.url(path))
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    return page


def send(page: Page, content: str, stream: str | None = None, topic: str | None = None,
         to: str | None = None) -> None:
    """Compose and send (Enter); returns once the server said the message was sent."""
    if stream is not None:
        page.select_option("#compose-target", f"stream:{stream}")
        page.fill("#compose-topic", topic or "general")
    if to is not None:
        page.select_option("#compose-target", "private")
        page.fill("#compose-recipients", to)
    page.fill("#compose-content", content)
    page.press("#compose-content", "Enter")
    expect(page.locator("#compose-content")).to_have_value("")
    expect(page.locator("#compose-error")).to_be_hidden()


def messages(page: Page, text: str) -> Locator:
    return page.locator("li.message", has_text=text)


def stored_queue(page: Page, user: User) -> dict[str, Any]:
    """The queue id and last event id the page keeps in sessionStorage."""
    raw = page.evaluate("key => sessionStorage.getItem(key)", f"eventbus.queue.{user.id}")
    assert raw, "the page keeps no queue"
    return dict(json.loads(raw))


def presence_event(user: User, status: str = "active") -> dict[str, Any]:
    now = time.time()
    return {"type": "presence", "user_id": user.id, "email": user.email, "server_timestamp": now,
            "presence": {"website": {"client": "website", "status": status, "timestamp": int(now), "pushable": False}}}


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


# -- scenarios ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
def test_two_people_chat_live_across_a_server_restart(
        pages: NewPage, web: StartWeb, world: World,
        sender_worker: WorkerThreads, transport: str, event_broker: MemoryBroker) -> None:
    server = web()
    # Given Iago, logged in with one click as a development user, on the websocket,
    iago = dev_login(pages(), server, world.iago)
    assert iago.evaluate("document.body.dataset.transport") == "websocket"
    # and Othello, logged in with his API key, on the websocket or long-polling.
    othello = key_login(pages(), server, world.othello, f"/?transport={transport}" if transport == "longpoll" else "/")
    assert othello.evaluate("document.body.dataset.transport") == {"websocket": "websocket",
                                                                  "longpoll": "long-polling"}[transport]

    # When Iago sends Markdown mentioning Othello,
    send(iago, "**Hello** @**Othello**, see `the plan`", stream="Denmark", topic="plans")
    # then Othello sees it at once, rendered, the mention of him highlighted;
    hello = messages(othello, "Hello")
    expect(hello).to_have_count(1)
    expect(hello).to_have_class(re.compile(r"\bmentioned\b"))
    expect(hello.locator(".content strong")).to_have_text("Hello")
    expect(hello.locator(".content code")).to_have_text("the plan")
    expect(hello.locator(f".user-mention.me[data-user-id='{world.othello.id}']")).to_have_text("@Othello")
    expect(othello.locator("li.recipient-bar").first).to_contain_text("#Denmark")
    # Iago sees his own message, not highlighted for him.
    expect(messages(iago, "Hello")).to_have_count(1)
    expect(messages(iago, "Hello")).not_to_have_class(re.compile(r"\bmentioned\b"))
    # A presence event lights a green dot by Desdemona's name.
    desdemona = othello.locator(f".person[data-user-id='{world.desdemona.id}']")
    expect(desdemona).to_have_attribute("data-presence", "offline")
    send_event(event_broker, presence_event(world.desdemona), [world.othello.id])
    expect(desdemona).to_have_attribute("data-presence", "active")

    # When the server restarts while Othello's browser is offline,
    queues = {"iago": stored_queue(iago, world.iago), "othello": stored_queue(othello, world.othello)}
    othello.context.set_offline(True)
    server.stop()
    expect(iago.locator("#status")).to_have_attribute("data-state", "reconnecting")
    expect(othello.locator("#status")).to_have_attribute("data-state", "reconnecting")
    server = web()
    # Iago's page resumes its queue, and a message sent now waits in Othello's queue;
    expect(iago.locator("#status")).to_have_attribute("data-state", "live")
    send(iago, "After the restart", stream="Denmark", topic="plans")
    expect(messages(iago, "After the restart")).to_have_count(1)
    expect(othello.locator("#status")).to_have_attribute("data-state", "reconnecting")
    # then Othello, back online, resumes his queue and gets it, once, and nothing twice.
    othello.context.set_offline(False)
    expect(othello.locator("#status")).to_have_attribute("data-state", "live")
    expect(messages(othello, "After the restart")).to_have_count(1)
    expect(messages(othello, "Hello")).to_have_count(1)
    assert stored_queue(iago, world.iago)["queue_id"] == queues["iago"]["queue_id"]
    assert stored_queue(othello, world.othello)["queue_id"] == queues["othello"]["queue_id"]

    # Othello answers over his own transport; Iago gets it once.
    send(othello, "Reply from _Othello_", stream="Denmark", topic="plans")
    expect(messages(iago, "Reply from")).to_have_count(1)
    expect(messages(iago, "Reply from").locator(".content em")).to_have_text("Othello")
    expect(messages(othello, "Reply from")).to_have_count(1)
    expect(iago.locator("li.message")).to_have_count(3)
    expect(othello.locator("li.message")).to_have_count(3)

    # The dashboard shows the queues: message_sender processed the three messages, and Tornado holds both queues.
    dashboard = iago.context.new_page()
    dashboard.goto(server.url("/devtools/queues"))
    sender = dashboard.locator(".queue-card[data-queue='message_sender']")
    expect(sender).to_have_attribute("data-state", "OK")
    expect(sender.locator("[data-field=processed]")).to_have_text("3")
    expect(sender.locator("[data-field=depth]")).to_have_text("0")
    expect(dashboard.locator("#t-queues")).to_have_text("2")


def test_log_out_ends_the_session_for_a_copied_cookie_too(pages: NewPage, web: StartWeb, world: World) -> None:
    server = web(development=False)
    # Given Iago logged in with his API key, and his session cookie copied into another browser,
    iago = key_login(pages(), server, world.iago, "/")
    session = next(c["value"] for c in iago.context.cookies() if c["name"] == "eventbus_session")
    thief = pages()
    thief.context.add_cookies([{"name": "eventbus_session", "value": session, "url": server.url("/")}])
    thief.goto(server.url("/"))
    expect(thief.locator("#status")).to_have_attribute("data-state", "live")
    # when Iago logs out (the page sends its CSRF token: the logout is not refused),
    iago.locator(".logout").first.click()
    iago.wait_for_url(server.url("/login"))
    # then the copy's live connection is closed and its page goes to the login page, for good.
    thief.wait_for_url(re.compile(r"/login\?next="))
    thief.goto(server.url("/"))
    thief.wait_for_url(re.compile(r"/login\?next="))


def test_a_lost_queue_is_replaced_and_recent_messages_reloaded(pages: NewPage, web: StartWeb,
                                                               world: World, sender_worker: WorkerThreads) -> None:
    server = web()
    othello = dev_login(pages(), server, world.othello)
    iago = dev_login(pages(), server, world.iago)
    send(iago, "Before the queue was lost", stream="Verona", topic="t")
    expect(messages(othello, "Before the queue was lost")).to_have_count(1)
    lost = stored_queue(othello, world.othello)["queue_id"]

    # When the server drops Othello's queue (as when it expired while he was away),
    def drop() -> None:
        assert server.server is not None
        client = server.server.registry.get(lost, world.othello.id)
        assert client is not None
        server.server.registry.remove(client, "expired")

    server.call(drop)
    # then his page registers a new one, keeps what it showed, and goes on receiving, each message once.
    expect(othello.locator("#status")).to_have_attribute("data-state", "live")
    othello.wait_for_function("([key, lost]) => JSON.parse(sessionStorage.getItem(key)).queue_id !== lost",
                              arg=[f"eventbus.queue.{world.othello.id}", lost])
    send(iago, "After the queue was lost", stream="Verona", topic="t")
    expect(messages(othello, "After the queue was lost")).to_have_count(1)
    expect(messages(othello, "Before the queue was lost")).to_have_count(1)


def test_a_page_whose_registration_is_rate_limited_registers_when_the_server_allows(
        pages: NewPage, web: StartWeb, world: World, sender_worker: WorkerThreads) -> None:
    # Given a server that lets a user register one queue every 6 s (60/60 s in development mode),
    server = web(rate_limit_register=(6, 60.0))
    othello = dev_login(pages(), server, world.othello)
    iago = dev_login(pages(), server, world.iago)
    lost = stored_queue(othello, world.othello)["queue_id"]

    # When Othello has used up his registrations and his queue is dropped,
    def use_up_and_drop() -> None:
        while not server.server.rate_limits.acquire(rate_limit.REGISTER, world.othello.id):
            pass
        client = server.server.registry.get(lost, world.othello.id)
        assert client is not None
        server.server.registry.remove(client, "expired")

    server.call(use_up_and_drop)
    # then his page is told to wait (RATE_LIMIT_HIT), registers once it may, and receives messages again.
    othello.wait_for_function("([key, lost]) => (JSON.parse(sessionStorage.getItem(key)) || {queue_id: lost}).queue_id "
                              "!== lost", arg=[f"eventbus.queue.{world.othello.id}", lost])
    expect(othello.locator("#status")).to_have_attribute("data-state", "live")
    send(iago, "After the wait", stream="Verona", topic="t")
    expect(messages(othello, "After the wait")).to_have_count(1)


def test_private_messages_and_send_errors(pages: NewPage, web: StartWeb, world: World,
                                          sender_worker: WorkerThreads) -> None:
    server = web()
    iago = dev_login(pages(), server, world.iago)
    desdemona = dev_login(pages(), server, world.desdemona, "/?transport=longpoll")
    othello = dev_login(pages(), server, world.othello)

    # Iago picks Desdemona in the people list and writes to her alone.
    iago.click(f".person[data-user-id='{world.desdemona.id}']")
    expect(iago.locator("#compose-recipients")).to_have_value(world.desdemona.email)
    send(iago, "A word in private")
    expect(messages(desdemona, "A word in private")).to_have_count(1)
    expect(desdemona.locator("li.recipient-bar.private")).to_contain_text("You and Iago")
    expect(messages(othello, "A word in private")).to_have_count(0)
    # A message to nobody who exists is refused with the server's reason, over either transport.
    for page in (iago, desdemona):
        page.select_option("#compose-target", "private")
        page.fill("#compose-recipients", "ghost@example.com")
        page.fill("#compose-content", "Hello?")
        page.press("#compose-content", "Enter")
        expect(page.locator("#compose-error")).to_contain_text("Invalid email 'ghost@example.com'")
        expect(page.locator("#compose-content")).to_have_value("Hello?")
    # A stream narrows the view to its messages.
    send(iago, "In Verona", stream="Verona", topic="t")
    iago.click("#streams button.stream:has-text('Denmark')")
    expect(iago.locator("#narrow-title")).to_have_text("#Denmark")
    expect(messages(iago, "In Verona")).to_have_count(0)
    iago.click("#streams button.stream:has-text('Verona')")
    expect(messages(iago, "In Verona")).to_have_count(1)


def test_pages_on_a_laptop_and_a_phone(pages: NewPage, web: StartWeb, world: World,
                                       sender_worker: WorkerThreads, event_broker: MemoryBroker) -> None:
    server = web()
    iago = dev_login(pages(), server, world.iago)
    othello = dev_login(pages(), server, world.othello)
    conversation = [
        (iago, "Good morning! The plan for today is in the **wiki**."),
        (othello, "Thanks @**Iago**. Two things:\n\n1. the `deploy` script\n2. the _queue_ dashboard"),
        (iago, "> the queue dashboard\n\nIt is at /devtools/queues. @**Othello** can you check it?"),
        (othello, "```python\nfor queue in registered_queues():\n    print(queue)\n```"),
        (iago, "Looks good :) see #**Verona** for the rest."),
    ]
    for page, content in conversation:
        send(page, content, stream="Denmark", topic="standup")
    expect(othello.locator("li.message")).to_have_count(len(conversation))
    send_event(event_broker, presence_event(world.iago), [world.othello.id])
    send_event(event_broker, presence_event(world.desdemona, "idle"), [world.othello.id])
    # A queue nobody consumes, and an event in an error store, for the dashboard to show.
    event_broker.publish_many("noop", [{"n": n} for n in range(25)])
    event_broker.error_store.record("test", {"n": 1}, error="ValueError: asked to raise")

    for device_name, device in (("laptop", LAPTOP), ("phone", PHONE)):
        login = pages(device)
        login.goto(server.url("/login"))
        expect(login.locator("button.dev-user")).to_have_count(3)
        screenshot(login, f"login-{device_name}")

        chat = pages(device)
        dev_login(chat, server, world.othello)
        expect(chat.locator("li.message")).to_have_count(len(conversation))
        expect(chat.locator("li.message.mentioned")).to_have_count(1)
        send_event(event_broker, presence_event(world.iago), [world.othello.id])
        expect(chat.locator(f".person[data-user-id='{world.iago.id}']")).to_have_attribute("data-presence", "active")
        screenshot(chat, f"chat-{device_name}")
        assert_fits(chat)
        if device_name == "laptop":  # a stream link in a message narrows the view, on the same page
            chat.click("li.message a.stream:has-text('#Verona')")
            expect(chat.locator("#narrow-title")).to_have_text("#Verona")
            assert chat.url == server.url("/")
        if device_name == "phone":
            chat.click("#menu-toggle")
            chat.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left === 0")
            screenshot(chat, "chat-phone-menu")
            chat.click("#streams button.stream:has-text('Verona')")
            expect(chat.locator("#narrow-title")).to_have_text("#Verona")
            expect(chat.locator("#sidebar")).not_to_be_in_viewport()

        dashboard = chat.context.new_page()
        dashboard.goto(server.url("/devtools/queues"))
        noop = dashboard.locator(".queue-card[data-queue='noop']")
        expect(noop).to_have_attribute("data-state", "CRITICAL")
        expect(noop.locator("[data-field=depth]")).to_have_text("25")
        expect(dashboard.locator(".queue-card").first).to_have_attribute("data-state", "CRITICAL")
        expect(dashboard.locator(".queue-card[data-queue='test'] [data-field=errors]")).to_have_text("1")
        expect(dashboard.locator(".queue-card[data-queue='message_sender'] [data-field=processed]")).to_have_text(
            str(len(conversation)))
        expect(dashboard.locator("#overall")).to_have_attribute("data-state", "CRITICAL")
        first_sample = dashboard.locator("#updated").text_content()
        # A second sample, so the charts have a line to draw.
        expect(dashboard.locator("#updated")).not_to_have_text(first_sample or "", timeout=10_000)
        screenshot(dashboard, f"queues-{device_name}")
        assert_fits(dashboard)


def assert_fits(page: Page) -> None:
    """Nothing sticks out sideways: the page needs no horizontal scrolling."""
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{page.url} is {overflow}px wider than the screen"


# -- the JSON endpoints and the gates, without a browser ------------------------------------------------


class Client:
    """A cookie-keeping HTTP client that does not follow redirects."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    def __init__(self, server: WebServer) -> None:
        self.server = server
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), self._NoRedirect)

    def call(self, method: str, path: str, headers: dict[str, str] | None = None,
             **params: str) -> tuple[int, dict[str, str], Any]:
        """(status, headers, decoded JSON body or the text); the CSRF cookie goes along as X-CSRFToken, as the
        pages' scripts send it (``headers`` add to or replace what goes)."""
        body = urllib.parse.urlencode(params).encode() if method != "GET" else None
        headers = {"X-CSRFToken": self.cookie("csrftoken") or "", **(headers or {})}
        request = urllib.request.Request(self.server.url(path), data=body, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=10) as response:
                status, head, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            status, head, raw = e.code, dict(e.headers), e.read()
        is_json = head.get("Content-Type", "").startswith("application/json")
        return status, head, json.loads(raw) if is_json else raw.decode()

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)


def test_pages_and_json_need_a_session(web: StartWeb, world: World) -> None:
    server = web()
    client = Client(server)
    for page in ("/", "/devtools/queues"):
        status, headers, _ = client.call("GET", page)
        assert status == 302 and headers["Location"] == "/login?" + urllib.parse.urlencode({"next": page})
    for endpoint in ("/json/users", "/json/users/me", "/json/streams", "/devtools/queues.json"):
        status, _, body = client.call("GET", endpoint)
        assert (status, body["code"]) == (401, "UNAUTHORIZED"), endpoint
    status, headers, body = client.call("GET", "/login")
    assert status == 200 and "<title>Log in" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]


def test_development_login_only_in_development_mode(web: StartWeb, world: World) -> None:
    server = web(development=False)
    client = Client(server)
    assert client.call("GET", "/accounts/login/dev")[0] == 404
    assert client.call("POST", "/accounts/login/dev", email=world.iago.email)[0] == 404
    # The API key form works in any mode.
    status, _, body = client.call("POST", "/accounts/login", email=world.iago.email, api_key=world.iago.api_key)
    assert status == 200 and body["user_id"] == world.iago.id
    assert client.call("GET", "/")[0] == 200


def test_development_login_and_the_json_endpoints(web: StartWeb, world: World) -> None:
    server = web()
    client = Client(server)
    status, _, body = client.call("GET", "/accounts/login/dev")
    assert status == 200
    assert [u["email"] for u in body["users"]] == [world.iago.email, world.othello.email, world.desdemona.email]
    # From another site's page, nobody is logged in.
    evil = {"Origin": "https://evil.example"}
    assert client.call("POST", "/accounts/login/dev", headers=evil, email=world.othello.email)[0] == 403
    assert client.cookie("eventbus_session") is None
    assert client.call("POST", "/accounts/login/dev", email="nobody@example.com")[0] == 401
    status, _, body = client.call("POST", "/accounts/login/dev", email=world.othello.email)
    assert status == 200 and body["user_id"] == world.othello.id

    assert client.call("GET", "/json/users/me")[2]["email"] == world.othello.email
    members = client.call("GET", "/json/users")[2]["members"]
    assert {m["full_name"] for m in members} == {"Iago", "Othello", "Desdemona"}
    assert "api_key" not in members[0]
    streams = client.call("GET", "/json/streams")[2]["streams"]
    assert [s["name"] for s in streams] == ["Denmark", "Verona"]
    status, _, feed = client.call("GET", "/devtools/queues.json")
    assert status == 200
    names = [q["name"] for q in feed["queues"]]
    assert "message_sender" in names and feed["broker_error"] is None
    sender = feed["queues"][names.index("message_sender")]
    assert {"depth", "consumers", "consume_rate", "average_consume_time", "backlog_seconds", "errors", "state",
            "processed", "failed", "history"} <= set(sender)
    assert {"connected_clients", "live_queues", "events_per_second", "queues"} <= set(feed["tornado"])
    assert [q["name"] for q in feed["tornado"]["queues"]] == ["notify_tornado", "tornado_return"]


def test_dashboard_consume_rate_from_stats_deltas(web: StartWeb, world: World, event_settings: Settings) -> None:
    server = web()
    client = Client(server)
    client.call("POST", "/accounts/login", email=world.iago.email, api_key=world.iago.api_key)
    stats_file = stats_path(event_settings.var_dir, "test")
    stats_file.parent.mkdir(parents=True, exist_ok=True)

    def worker_wrote(processed: int, failed: int, update_time: float) -> None:
        stats_file.write_text(json.dumps({"processed": processed, "failed": failed, "update_time": update_time,
                                          "recent_average_consume_time": 0.01}))

    def test_queue() -> dict[str, Any]:
        feed = client.call("GET", "/devtools/queues.json")[2]
        return next(q for q in feed["queues"] if q["name"] == "test")

    # Given a worker that wrote its stats once, the rate is not known yet;
    now = time.time()
    worker_wrote(100, 2, now - 30)
    first = test_queue()
    assert (first["processed"], first["failed"], first["consume_rate"]) == (100, 2, None)
    # when it writes again 20 s later with 30 more consumed (failures count: they were consumed too),
    worker_wrote(125, 7, now - 10)
    # then the rate is the difference over the stats' own clock,
    wait_for(lambda: test_queue()["consume_rate"] is not None, what="a second sample")
    latest = test_queue()
    assert latest["consume_rate"] == pytest.approx(1.5)
    assert latest["history"][-1][1:] == [0, pytest.approx(1.5)]  # [time, depth, rate] for the chart
    # but over no less than the time between the samples: two writes 1 ms apart are no burst of 1000/s.
    worker_wrote(126, 7, now - 9.999)
    wait_for(lambda: test_queue()["consume_rate"] != pytest.approx(1.5), what="a third sample")
    assert test_queue()["consume_rate"] < 1.0


def test_typing_shows_on_the_other_page(pages: NewPage, web: StartWeb, world: World,
                                        sender_worker: WorkerThreads) -> None:
    server = web()
    iago = dev_login(pages(), server, world.iago)
    othello = dev_login(pages(), server, world.othello, "/?transport=longpoll")
    typing = othello.locator("#typing")
    expect(typing).to_be_hidden()
    # When Iago starts writing to Othello alone,
    iago.click(f".person[data-user-id='{world.othello.id}']")
    iago.locator("#compose-content").press_sequentially("Are you th")
    # then Othello's page says so, and Iago's own page does not;
    expect(typing).to_have_text("Iago is typing…")
    expect(iago.locator("#typing")).to_be_hidden()
    # once Iago sends, the indicator goes (his page sends a stop).
    iago.press("#compose-content", "Enter")
    expect(messages(othello, "Are you th")).to_have_count(1)
    expect(typing).to_be_hidden()
    # Typing in a stream's topic shows on the pages of its subscribers too.
    iago.select_option("#compose-target", "stream:Denmark")
    iago.fill("#compose-topic", "plans")
    iago.locator("#compose-content").press_sequentially("Soon")
    expect(typing).to_have_text("Iago is typing…")


def test_a_page_that_loads_shows_who_is_online(pages: NewPage, web: StartWeb, world: World,
                                                event_settings: Settings) -> None:
    # Given Desdemona active a moment ago and Iago last seen long ago (no presence event will come),
    presence = AnalyticsStore(event_settings.database)
    presence.set_presence(world.desdemona.id, "active", "website", time.time() - 5)
    presence.set_presence(world.iago.id, "active", "website", time.time() - 3600)
    server = web()
    # when Othello's page loads,
    othello = dev_login(pages(), server, world.othello)
    # then it shows Desdemona online at once, and Iago offline.
    expect(othello.locator(f".person[data-user-id='{world.desdemona.id}']")).to_have_attribute("data-presence",
                                                                                               "active")
    expect(othello.locator(f".person[data-user-id='{world.iago.id}']")).to_have_attribute("data-presence", "offline")
