"""The errors eventbus raises.

pika's exceptions never leave the queue layer: they are translated here, once,
at the boundary, into this tree::

    EventBusError
     +-- ConfigurationError        a setting has a value that cannot work
     |    +-- QueueMismatchError   a queue exists with another type: run `eventbus migrate_queues`
     +-- EventEncodingError        an event is not JSON-serializable, or a body is not JSON
     +-- PermanentError            an event can never be processed: stored at once, never retried
     |    +-- ContractError        an event breaks its queue's contract (eventbus.contracts); names the field
     +-- BrokerError               anything between us and RabbitMQ
          +-- BrokerUnreachable    could not connect (within the retry budget)
          +-- PublishError         RabbitMQ did not take an event
          |    +-- UnroutableError no queue to route to (mandatory publishing)
          |    +-- NackedError     the broker refused the event (basic.nack)
          |    +-- PublishTimeout  connected, but no confirm within the budget
          +-- QueueNotFound        no queue of that name
          +-- ConsumerError        the consumer's connection thread died
"""

from __future__ import annotations


class EventBusError(Exception):
    """Base of every error eventbus raises."""


class ConfigurationError(EventBusError):
    """A setting has a value that cannot work."""


class EventEncodingError(EventBusError, ValueError):
    """An event cannot be encoded to JSON, or a body cannot be decoded."""


class PermanentError(EventBusError):
    """An event that can never be processed (malformed, refers to nothing): no retries, straight to the error store."""


class ContractError(PermanentError, ValueError):
    """An event does not have the shape its queue's contract says (``eventbus.contracts``); the text names the field.

    A ValueError, so that callers checking input catch it as they catch any
    bad value; a PermanentError, so that a worker stores such an event at once:
    trying again cannot give it the field it lacks.
    """


class BrokerError(EventBusError):
    """Something went wrong between this process and RabbitMQ."""


class BrokerUnreachable(BrokerError):
    """The broker could not be reached within the retry budget."""


class PublishError(BrokerError):
    """RabbitMQ did not take an event."""


class UnroutableError(PublishError):
    """A mandatory publish had no queue to go to (the queue was deleted)."""


class NackedError(PublishError):
    """RabbitMQ answered a publish with basic.nack (an internal broker error)."""


class PublishTimeout(PublishError):
    """Connected, but the broker confirmed nothing within the budget."""


class QueueNotFound(BrokerError):
    """There is no queue of that name."""


class ConsumerError(BrokerError):
    """A consumer's connection thread died; the events it held go back to the queue."""


class QueueMismatchError(ConfigurationError):
    """A queue exists on RabbitMQ with other arguments (another type) than the settings declare it with."""
