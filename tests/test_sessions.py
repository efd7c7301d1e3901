"""Server-side sessions and CSRF: logout ends a session for every copy of its cookie, the CSRF token is bound
to the session, logout cannot come from another site, the cookies' flags; and what production does not serve."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from eventbus import codec
from eventbus.app import extra_handlers
from eventbus.database import open_database
from eventbus.errors import ConfigurationError
from eventbus.queue import MemoryBroker
from eventbus.schema import sessions
from eventbus.sessions import SessionStore, session_key
from eventbus.settings import Settings
from eventbus.users import User
from tests.eventserver import ServerThread, StartServer, run
from tests.test_websocket import connect, login, receive, send

#: What a page of another site sends along with its requests.
EVIL_ORIGIN = "https://evil.example"


async def post(server: ServerThread, path: str, cookie: str, csrf: str | None, origin: str | None = None,
               body: str = "") -> HTTPResponse:
    """A POST as a browser sends it: the cookies, and the CSRF header and Origin when given."""
    headers = {"Cookie": cookie}
    if csrf is not None:
        headers["X-CSRFToken"] = csrf
    if origin is not None:
        headers["Origin"] = origin
    return await AsyncHTTPClient().fetch(server.url(path), method="POST", body=body, headers=headers,
                                         raise_error=False)


async def get(server: ServerThread, path: str, cookie: str = "") -> HTTPResponse:
    return await AsyncHTTPClient().fetch(server.url(path), headers={"Cookie": cookie}, follow_redirects=False,
                                         raise_error=False)


async def register(server: ServerThread, cookie: str, csrf: str) -> tuple[int, Any]:
    response = await post(server, "/json/register", cookie, csrf)
    return response.code, codec.decode(response.body)


def set_cookies(response: HTTPResponse) -> dict[str, str]:
    """Each cookie the answer sets, by name: its whole Set-Cookie header."""
    return {next(iter(SimpleCookie(header))): header for header in response.headers.get_list("Set-Cookie")}


def test_a_copied_cookie_stops_working_after_logout(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        # Given a session, with its cookie copied somewhere and a websocket opened with it,
        cookie, csrf = await login(server, users[0])
        copied = cookie
        assert (await register(server, copied, csrf))[0] == 200
        ws = await connect(server, cookie)
        await send(ws, {"type": "register"})
        await receive(ws, "registered")
        # when the user logs out from this site's page,
        logout = await post(server, "/accounts/logout", cookie, csrf, origin=f"http://127.0.0.1:{server.port}")
        assert logout.code == 200, logout.body
        # then the copy is refused, at once, everywhere the session counted,
        status, body = await register(server, copied, csrf)
        assert (status, body["code"]) == (401, "UNAUTHORIZED")
        # and the socket it opened is closed: log in again.
        assert await ws.read_message() is None
        assert ws.close_code == 4401

    run(scenario)


def test_the_database_holds_a_hash_of_the_session_id(start_server: StartServer, users: tuple[User, User],
                                                     event_settings: Settings) -> None:
    server = start_server()

    async def scenario() -> None:
        cookie, _ = await login(server, users[0])
        session_id = SimpleCookie(cookie)["eventbus_session"].value
        with open_database(event_settings.database).transaction() as db:
            stored = list(db.scalars(select(sessions.c.id_hash)))
        assert stored == [hashlib.sha256(session_id.encode()).hexdigest()]

    run(scenario)


def test_the_session_store_ends_one_session_all_of_a_user_and_expired_ones(database: Path | str) -> None:
    store = SessionStore(database)
    first, second, other = store.start(1, 60.0), store.start(1, 60.0), store.start(2, 60.0)
    assert store.live(first.id) == (1, first.expires) and store.live(other.id) == (2, other.expires)
    assert store.live(first.id + "x") is None and store.live("") is None and store.live("x" * 65) is None
    # Logout ends one session; deactivation every session of the user.
    assert store.end(first.id) and not store.end(first.id)
    assert store.live(first.id) is None and store.live(second.id) is not None
    assert store.end_all(1) == 1 and store.live(second.id) is None
    assert store.end_all(1) == 0 and store.live(other.id) is not None
    # A session past its lifetime is not live, and the next login deletes it.
    expired = store.start(3, -1.0)
    assert store.live(expired.id) is None
    store.start(3, 60.0)
    with store.database.transaction() as db:
        assert session_key(expired.id) not in set(db.scalars(select(sessions.c.id_hash)))


def test_a_session_expires(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server(session_lifetime_seconds=1.0)

    async def scenario() -> None:
        cookie, csrf = await login(server, users[0])
        status, body = await register(server, cookie, csrf)
        assert status == 200
        poll = f"/json/events?queue_id={body['queue_id']}&dont_block=true"
        assert (await get(server, poll, cookie)).code == 200
        # Served from the server's cache meanwhile: that must end with the session too.
        deadline = time.monotonic() + 10
        while (await get(server, poll, cookie)).code != 401:
            assert time.monotonic() < deadline, "the session outlived its lifetime"
            await asyncio.sleep(0.05)

    run(scenario)


def test_a_planted_csrf_cookie_with_a_matching_header_is_refused(start_server: StartServer,
                                                                 users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        # Given a victim's session, and an attacker with a session and a CSRF token of his own,
        victim, victim_csrf = await login(server, users[0])
        _, attacker_csrf = await login(server, users[1])
        # when the attacker plants his token as the CSRF cookies (Tornado's and ours) and sends it as the header,
        planted = f"{victim}; _xsrf={attacker_csrf}; csrftoken={attacker_csrf}"
        status, body = await register(server, planted, attacker_csrf)
        # then the request is refused: the token is checked against the session, not against a cookie;
        assert (status, body["msg"]) == (401, "CSRF token missing or incorrect")
        assert (await register(server, victim, "x" * 64))[0] == 401
        assert (await register(server, victim, "\u00e9"))[0] == 401  # not ASCII: refused, never a 500
        # and the victim's own token still works.
        assert (await register(server, victim, victim_csrf))[0] == 200

    run(scenario)


def test_logout_from_another_site_is_refused(start_server: StartServer, users: tuple[User, User]) -> None:
    server = start_server()

    async def scenario() -> None:
        cookie, csrf = await login(server, users[0])
        # A form of another site cannot send the token; a script there could not read it, and says where it is.
        without_token = await post(server, "/accounts/logout", cookie, None, origin=EVIL_ORIGIN)
        assert without_token.code == 401
        with_token = await post(server, "/accounts/logout", cookie, csrf, origin=EVIL_ORIGIN)
        assert with_token.code == 403 and "another site" in codec.decode(with_token.body)["msg"]
        assert "Set-Cookie" not in with_token.headers
        # The session lives on.
        assert (await register(server, cookie, csrf))[0] == 200

    run(scenario)


@pytest.mark.parametrize("site_url, secure", [("https://chat.example.com", True), ("http://127.0.0.1:9991", False)])
def test_cookie_flags(start_server: StartServer, users: tuple[User, User], site_url: str, secure: bool) -> None:
    server = start_server(site_url=site_url)

    async def scenario() -> None:
        user = users[0]
        response = await AsyncHTTPClient().fetch(server.url("/accounts/login"), method="POST",
                                                 body=f"email={user.email}&api_key={user.api_key}")
        cookies = {name: header.lower() for name, header in set_cookies(response).items()}
        session, csrf = cookies["eventbus_session"], cookies["csrftoken"]
        assert "httponly" in session and "samesite=lax" in session
        assert "httponly" not in csrf  # the pages' scripts read it
        assert ("secure" in session, "secure" in csrf) == (secure, secure)

    run(scenario)


# -- what production serves ---------------------------------------------------------------------------------


@pytest.fixture
def production(event_settings: Settings, event_broker: MemoryBroker, users: tuple[User, User]) -> Iterator[Any]:
    """``start(**settings)``: the server with every page (as ``eventbus runtornado``), not in development mode."""
    servers: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        settings = event_settings.replace(development=False, **overrides)
        server = ServerThread(settings, event_broker, extra_handlers=extra_handlers).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_the_queue_dashboard_is_for_administrators(production: Any, users: tuple[User, User]) -> None:
    iago, othello = users
    server = production(admin_emails=("IAGO@example.com",))

    async def scenario() -> None:
        admin, _ = await login(server, iago)
        other, _ = await login(server, othello)
        for path in ("/devtools/queues", "/devtools/queues.json"):
            assert (await get(server, path, other)).code == 403, path
            assert (await get(server, path, admin)).code == 200, path
        refused = await get(server, "/devtools/queues.json", other)
        assert codec.decode(refused.body)["code"] == "UNAUTHORIZED"

    run(scenario)


def test_without_administrators_production_has_no_dashboard_no_devtools_and_no_password_less_login(
        production: Any, users: tuple[User, User]) -> None:
    server = production()

    async def scenario() -> None:
        cookie, _ = await login(server, users[0])
        for path in ("/devtools/queues", "/devtools/queues.json", "/devtools/emails", "/devtools/pushes",
                     "/accounts/login/dev"):
            assert (await get(server, path, cookie)).code == 404, path
        dev_login = await post(server, "/accounts/login/dev", "", None, body=f"email={users[0].email}")
        assert dev_login.code == 404
        assert (await get(server, "/", cookie)).code == 200  # the chat page is served

    run(scenario)


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", str(400 * 24 * 3600)])
def test_a_session_lifetime_that_cannot_work_is_refused(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="EVENTBUS_SESSION_LIFETIME_SECONDS"):
        Settings.from_env({"EVENTBUS_SESSION_LIFETIME_SECONDS": raw, "EVENTBUS_SECRETS_FILE": "/nonexistent"})
    assert Settings.from_env({"EVENTBUS_SECRETS_FILE": "/nonexistent"}).session_lifetime_seconds == 14 * 24 * 3600
