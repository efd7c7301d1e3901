"""The Tornado event server: per-client event queues, long-polling and websocket delivery.

Producers call ``send_event(event, user_ids)``; ``eventbus runtornado`` runs the server.
"""

from eventbus.tornado_events.notify import send_event

__all__ = ["send_event"]
