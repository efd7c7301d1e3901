"""The web pages served by the event server: login, live chat, the queue dashboard, and in development the
emails and pushes the system sent (``devtools``).

Wire them in with ``make_app(server, extra_handlers=web_handlers(server))``.
"""

from eventbus.web.dashboard import QueueDashboard
from eventbus.web.handlers import STATIC_DIR, web_handlers

__all__ = ["STATIC_DIR", "QueueDashboard", "web_handlers"]
