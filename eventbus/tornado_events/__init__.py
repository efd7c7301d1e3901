"""The Tornado event server: per-client event queues, long-polling and websocket delivery.

Producers call ``send_event(broker, event, user_ids)`` (a processor passes ``self.broker``), or
``send_events`` for several at once;
``eventbus runtornado`` runs the server.

One module per concept::

    server         the event core: the client registry, notice intake, lifecycle, statistics
    clients        the client registry;  event_queue  one client's queue
    notify         notices in: send_event, the notify and return queue names
    away           notifications for users with no open client
    auth           who is asking: API keys, sessions, CSRF tokens, trust withdrawn
    submissions    requests sent to a processor (message_sender, message_actions) and their answers
    activity       what is recorded of each request: user activity, slow requests, errors
    sockets        the open websockets;  rate_limit  per-user limits
    handlers       the HTTP endpoints;  websocket  the websocket endpoint;  body_limit  the body cap
    message_actions  the endpoints of flags, edits, deletes and reactions

``EventServer`` creates its parts and starts and stops them in order;
``eventbus.app.make_app`` hands each handler the parts it uses.
"""

from eventbus.tornado_events.notify import send_event, send_events

__all__ = ["send_event", "send_events"]
