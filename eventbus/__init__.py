"""eventbus: a Tornado-integrated event bus on RabbitMQ, after Zulip's queue system.

The package has three components, each a subpackage; imports point down:

- ``eventbus.queue``: the RabbitMQ layer (publish, consume, the Tornado client,
  the in-process broker, the private node launcher);
- ``eventbus.processors``: queue workers and the ``eventbus`` command line;
- ``eventbus.tornado_events``: the Tornado event server.
"""

__version__ = "0.1.0"
