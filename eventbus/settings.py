"""One settings object for the whole system, read from ``EVENTBUS_*`` variables.

Secrets (the RabbitMQ password, the shared secret of internal endpoints) never
come from code: they are read from the secrets file, an INI file whose
``[secrets]`` section holds ``rabbitmq_password``, ``shared_secret``,
``smtp_password`` and ``push_api_key``::

    [secrets]
    rabbitmq_password = ...
    shared_secret = ...
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from eventbus.errors import ConfigurationError

#: Guest on loopback is what a fresh rabbitmq-server accepts.
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Where production keeps secrets, as Zulip keeps zulip-secrets.conf.
DEFAULT_SECRETS_FILE = "/etc/eventbus/secrets.conf"
BROKERS = ("amqp", "memory")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting, documented in README's configuration table."""

    broker: str = "amqp"
    amqp_url: str = DEFAULT_AMQP_URL
    secrets_file: Path = Path(DEFAULT_SECRETS_FILE)
    var_dir: Path = Path("var")
    #: Seconds a synchronous publish keeps retrying before it gives up.
    publish_timeout: float = 15.0
    #: Unacknowledged events RabbitMQ sends a consumer ahead of its acks.
    prefetch: int = 100
    #: Where the ``test`` processor appends its events (default: <var>/test_queue.jsonl).
    test_queue_path: Path | None = None
    #: The SQLite file of users and messages (default: <var>/eventbus.sqlite3).
    database_setting: Path | None = None
    #: The Tornado server: its port, and a name that tags what it asks of the processors.
    port: int = 9993
    server_id: str = "tornado"
    #: A held long-poll gets a heartbeat event after this many seconds (+-10%, see ClientRegistry.send_heartbeats).
    heartbeat_seconds: float = 50.0
    #: Event queues idle longer than their lifespan are collected this often.
    queue_gc_seconds: float = 60.0
    queue_lifespan_seconds: float = 600.0
    max_queue_lifespan_seconds: float = 7 * 24 * 3600.0
    #: A client queue holding more unacknowledged events than this is dropped.
    max_queue_events: int = 10_000
    #: ... or more bytes of events (their JSON): 2,000 idle clients at 10,000 events of any size could hold gigabytes.
    max_queue_bytes: int = 4 * 1024 * 1024
    #: A websocket with more unsent bytes than this is closed as a slow consumer.
    websocket_buffer_bytes: int = 1_000_000
    #: Development mode: log in as any user without a key (run_dev.py turns it on). Never in production.
    development: bool = False
    #: Where links in emails and notifications point.
    site_url: str = "http://127.0.0.1:9991"
    #: Outgoing mail: host, port, "none" / "starttls" / "ssl", user (the password is in the secrets file).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_tls: str = "none"
    smtp_user: str | None = None
    email_from: str = "eventbus <noreply@eventbus.localhost>"
    #: Who gets the error reports.
    admin_emails: tuple[str, ...] = ()
    #: The push notification gateway (a bouncer in production); None: mobile pushes are not sent.
    push_url: str | None = None
    #: A user's missed messages wait this long, then go out in one email.
    missed_email_window_seconds: float = 120.0
    #: Stream addresses of the email mirror: <stream token>@<domain>.
    email_gateway_domain: str = "streams.eventbus.localhost"
    #: The bots that post mirrored emails (when the sender is no user) and system messages.
    mirror_bot_email: str = "mirror-bot@eventbus.localhost"
    notification_bot_email: str = "notification-bot@eventbus.localhost"
    #: Where the slow query summaries are posted, and how slow a request must be to be reported.
    slow_query_stream: str = "logs"
    slow_request_seconds: float = 2.0
    rabbitmq_password: str | None = None
    shared_secret: str | None = None
    smtp_password: str | None = None
    push_api_key: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        secrets_file = Path(env.get("EVENTBUS_SECRETS_FILE", DEFAULT_SECRETS_FILE))
        secrets = _read_secrets(secrets_file)
        settings = cls(
            broker=env.get("EVENTBUS_BROKER", cls.broker).strip().lower(),
            amqp_url=env.get("EVENTBUS_AMQP_URL", cls.amqp_url),
            secrets_file=secrets_file,
            var_dir=Path(env.get("EVENTBUS_VAR_DIR", cls.var_dir)),
            publish_timeout=_number(env, "EVENTBUS_PUBLISH_TIMEOUT", cls.publish_timeout),
            prefetch=int(_number(env, "EVENTBUS_PREFETCH", cls.prefetch)),
            test_queue_path=_path(env, "EVENTBUS_TEST_QUEUE_FILE"),
            database_setting=_path(env, "EVENTBUS_DATABASE"),
            port=int(_number(env, "EVENTBUS_PORT", cls.port)),
            server_id=env.get("EVENTBUS_SERVER_ID", cls.server_id),
            heartbeat_seconds=_number(env, "EVENTBUS_HEARTBEAT_SECONDS", cls.heartbeat_seconds),
            queue_gc_seconds=_number(env, "EVENTBUS_QUEUE_GC_SECONDS", cls.queue_gc_seconds),
            queue_lifespan_seconds=_number(env, "EVENTBUS_QUEUE_LIFESPAN_SECONDS", cls.queue_lifespan_seconds),
            max_queue_events=int(_number(env, "EVENTBUS_MAX_QUEUE_EVENTS", cls.max_queue_events)),
            max_queue_bytes=int(_number(env, "EVENTBUS_MAX_QUEUE_BYTES", cls.max_queue_bytes)),
            websocket_buffer_bytes=int(_number(env, "EVENTBUS_WEBSOCKET_BUFFER_BYTES", cls.websocket_buffer_bytes)),
            development=env.get("EVENTBUS_DEVELOPMENT", "").strip().lower() in ("1", "true", "yes"),
            site_url=env.get("EVENTBUS_SITE_URL", cls.site_url),
            smtp_host=env.get("EVENTBUS_SMTP_HOST", cls.smtp_host),
            smtp_port=int(_number(env, "EVENTBUS_SMTP_PORT", cls.smtp_port)),
            smtp_tls=env.get("EVENTBUS_SMTP_TLS", cls.smtp_tls).strip().lower(),
            smtp_user=env.get("EVENTBUS_SMTP_USER") or None,
            email_from=env.get("EVENTBUS_EMAIL_FROM", cls.email_from),
            admin_emails=tuple(e.strip() for e in env.get("EVENTBUS_ADMIN_EMAILS", "").split(",") if e.strip()),
            push_url=env.get("EVENTBUS_PUSH_URL") or None,
            missed_email_window_seconds=_number(env, "EVENTBUS_MISSED_EMAIL_WINDOW", cls.missed_email_window_seconds),
            email_gateway_domain=env.get("EVENTBUS_EMAIL_GATEWAY_DOMAIN", cls.email_gateway_domain),
            mirror_bot_email=env.get("EVENTBUS_MIRROR_BOT_EMAIL", cls.mirror_bot_email),
            notification_bot_email=env.get("EVENTBUS_NOTIFICATION_BOT_EMAIL", cls.notification_bot_email),
            slow_query_stream=env.get("EVENTBUS_SLOW_QUERY_STREAM", cls.slow_query_stream),
            slow_request_seconds=_number(env, "EVENTBUS_SLOW_REQUEST_SECONDS", cls.slow_request_seconds),
            rabbitmq_password=secrets.get("rabbitmq_password"),
            shared_secret=secrets.get("shared_secret"),
            smtp_password=secrets.get("smtp_password"),
            push_api_key=secrets.get("push_api_key"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ConfigurationError naming the first setting that cannot work."""
        if self.broker not in BROKERS:
            raise ConfigurationError(
                f"EVENTBUS_BROKER must be one of {', '.join(BROKERS)}, not {self.broker!r}"
            )
        scheme = urllib.parse.urlsplit(self.amqp_url).scheme
        if scheme not in ("amqp", "amqps"):
            raise ConfigurationError(
                f"EVENTBUS_AMQP_URL must start with amqp:// or amqps://, not {scheme!r}"
            )
        positive = {
            "EVENTBUS_PUBLISH_TIMEOUT": self.publish_timeout, "EVENTBUS_PREFETCH": self.prefetch,
            "EVENTBUS_HEARTBEAT_SECONDS": self.heartbeat_seconds, "EVENTBUS_QUEUE_GC_SECONDS": self.queue_gc_seconds,
            "EVENTBUS_QUEUE_LIFESPAN_SECONDS": self.queue_lifespan_seconds,
            "EVENTBUS_MAX_QUEUE_EVENTS": self.max_queue_events, "EVENTBUS_MAX_QUEUE_BYTES": self.max_queue_bytes,
            "EVENTBUS_WEBSOCKET_BUFFER_BYTES": self.websocket_buffer_bytes,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigurationError(f"{name} must be positive, not {value!r}")
        if self.smtp_tls not in ("none", "starttls", "ssl"):
            raise ConfigurationError(f"EVENTBUS_SMTP_TLS must be none, starttls or ssl, not {self.smtp_tls!r}")
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"EVENTBUS_PORT must be a TCP port, not {self.port}")

    @property
    def connection_url(self) -> str:
        """The AMQP URL to connect with: the password from the secrets file fills a URL without one."""
        parts = urllib.parse.urlsplit(self.amqp_url)
        if parts.password is not None or not self.rabbitmq_password:
            return self.amqp_url
        user = parts.username or "guest"
        password = urllib.parse.quote(self.rabbitmq_password, safe="")
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))

    @property
    def database(self) -> Path:
        """``EVENTBUS_DATABASE``, else ``<var>/eventbus.sqlite3``."""
        return self.database_setting or self.var_dir / "eventbus.sqlite3"

    @property
    def test_queue_file(self) -> Path:
        """``EVENTBUS_TEST_QUEUE_FILE``, else ``<var>/test_queue.jsonl``."""
        return self.test_queue_path or self.var_dir / "test_queue.jsonl"

    @property
    def redacted_url(self) -> str:
        """The broker URL for messages and logs, with any password replaced by ``***``."""
        return redact_url(self.amqp_url)

    def replace(self, **changes: object) -> Settings:
        """A copy with some settings changed (for tests and command-line flags)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw) if raw else None


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {raw!r}") from None


def _read_secrets(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, OSError) as e:
        raise ConfigurationError(f"cannot read secrets file {path}: {e}") from None
    return dict(parser["secrets"]) if parser.has_section("secrets") else {}


_lock = threading.Lock()
_current: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = Settings.from_env()
        return _current


def set_settings(settings: Settings | None) -> None:
    """Replace the process's settings (None: read the environment again on next use)."""
    global _current
    with _lock:
        _current = settings
