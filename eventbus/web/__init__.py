"""The web pages served by the event server: development login, live chat and the queue dashboard.

Wire them in with ``make_app(server, extra_handlers=web_handlers(server))``.
"""

from eventbus.web.dashboard import QueueDashboard
from eventbus.web.handlers import STATIC_DIR, web_handlers

__all__ = ["STATIC_DIR", "QueueDashboard", "web_handlers"]
