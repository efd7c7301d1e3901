"""The app's wiring: every URL hands its handler the parts its ``initialize`` takes, and a typed auth kind."""

from __future__ import annotations

from typing import Any

import pytest

from eventbus.app import extra_handlers, make_app
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings
from eventbus.tornado_events.auth import Auth
from eventbus.tornado_events.handlers import BaseHandler, MessagesHandler, handler_args
from eventbus.tornado_events.server import EventServer


def test_every_url_hands_its_handler_what_it_takes_and_an_auth_kind(event_settings: Settings,
                                                                    event_broker: MemoryBroker) -> None:
    # Given the app with every page (development mode and an administrator: nothing left out),
    settings = event_settings.replace(development=True, admin_emails=("iago@example.com",))
    server = EventServer(settings, event_broker)
    app = make_app(server, extra_handlers(server))
    specs: list[tuple[type[Any], dict[str, Any]]] = [
        (rule.target, rule.target_kwargs) for rule in app.wildcard_router.rules]
    specs.append((app.settings["default_handler_class"], app.settings["default_handler_args"]))
    kinds = set()
    for handler_class, kwargs in specs:
        # when Tornado hands a handler its URL spec's arguments (initialize only keeps them),
        handler = object.__new__(handler_class)
        handler.initialize(**kwargs)
        # then it takes them all, and an API handler knows how its requests authenticate, by kind.
        if isinstance(handler, BaseHandler):
            assert isinstance(handler.auth, Auth), handler_class
            kinds.add(handler.auth)
    assert kinds == set(Auth)


def test_an_auth_kind_given_as_a_string_is_refused(event_settings: Settings, event_broker: MemoryBroker) -> None:
    # A misspelt kind must not fall through to "no authentication": the handler refuses it.
    server = EventServer(event_settings, event_broker)
    kwargs = handler_args(server, Auth.API, submissions=server.submissions, messages=server.messages)
    handler = MessagesHandler.__new__(MessagesHandler)
    with pytest.raises(TypeError, match="'sesion'"):
        handler.initialize(**{**kwargs, "auth": "sesion"})
