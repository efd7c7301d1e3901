"""The Tornado event server: per-client event queues, long-polling and websocket delivery.

Producers call ``send_event(broker, event, user_ids)`` (a processor passes ``self.broker``);
``eventbus runtornado`` runs the server.
"""

from eventbus.tornado_events.notify import send_event

__all__ = ["send_event"]
