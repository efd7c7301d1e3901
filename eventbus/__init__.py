"""eventbus: a Tornado-integrated event bus on RabbitMQ, after Zulip's queue system.

Three layers; imports point down only (tests/test_layers.py checks it)::

    top         app (make_app, serve)  cli (the `eventbus` command)  web/ (pages)
                devtools/ (development stand-ins)  metrics  django
    components  queue/           the RabbitMQ layer: publish, consume, the Tornado client,
                                 the in-process broker, the private node launcher
                processors/      @assign_queue, the worker base classes, the processors
                tornado_events/  the event core: client queues, HTTP and websocket handlers,
                                 the notify consumer
    core        settings  codec  errors  validation  contracts (queue names, event shapes)
                database (SQLite or PostgreSQL)  schema  migrations  claims
                users  sessions  accounts  messages  presence

The top wires the components together and faces users; the components never
import it. tornado_events and processors use queue; queue imports neither, and
tornado_events never imports processors (they talk through queues; processors
call ``send_event``). The core imports nothing above it.
"""

__version__ = "0.1.0"
