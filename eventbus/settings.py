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
import ipaddress
import math
import os
import re
import threading
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from eventbus.errors import ConfigurationError
from eventbus.sharding import Sharding

#: Guest on loopback is what a fresh rabbitmq-server accepts.
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: Where production keeps secrets, as Zulip keeps zulip-secrets.conf.
DEFAULT_SECRETS_FILE = "/etc/eventbus/secrets.conf"
BROKERS = ("amqp", "memory")
#: ``classic``: the one-node default; ``quorum``: replicated over a cluster with Raft, confirmed once a majority has it.
QUEUE_TYPES = ("classic", "quorum")
#: A value that starts like a URL (``postgresql://...``), not like a file path.
URL_LOOKING = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: A session cookie meant to outlive a year is a credential nobody remembers handing out.
MAX_SESSION_LIFETIME_SECONDS = 366 * 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting, documented in README's configuration table."""

    broker: str = "amqp"
    #: One AMQP URL, or several comma-separated (the nodes of a cluster): clients use one that answers.
    amqp_url: str = DEFAULT_AMQP_URL
    #: The type every durable queue is declared with: classic, or quorum (a cluster's replicated queues).
    queue_type: str = "classic"
    secrets_file: Path = Path(DEFAULT_SECRETS_FILE)
    var_dir: Path = Path("var")
    #: Seconds a synchronous publish keeps retrying before it gives up.
    publish_timeout: float = 15.0
    #: Unacknowledged events RabbitMQ sends a consumer ahead of its acks.
    prefetch: int = 100
    #: Where the ``test`` processor appends its events (default: <var>/test_queue.jsonl).
    test_queue_path: Path | None = None
    #: The database of every store: a SQLite file's path, or a postgresql:// URL (default: <var>/eventbus.sqlite3).
    database_setting: Path | str | None = None
    #: The Tornado server: its port, and a name that tags what it asks of the processors.
    port: int = 9993
    server_id: str = "tornado"
    #: The Tornado shards and which users each owns (see eventbus.sharding), and which one this process is.
    sharding: Sharding = dataclasses.field(default_factory=Sharding)
    tornado_shard: int = 0
    #: Addresses of the proxies (nginx) whose X-Forwarded-For / X-Real-IP name the client; none: never trusted.
    trusted_proxies: tuple[str, ...] = ()
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
    #: The largest request body (and websocket message) the server reads; a larger one is answered 413 unread.
    #: The largest legitimate request is about 120 KB (a message of 10,000 characters, form-encoded).
    max_body_bytes: int = 2 * 1024 * 1024
    #: Per-user rate limits as (requests, seconds), bursts of up to ``requests`` (see tornado_events.rate_limit):
    #: every authenticated request not limited otherwise, registrations of event queues, presence updates.
    rate_limit_api: tuple[int, float] = (1200, 60.0)
    rate_limit_register: tuple[int, float] = (100, 60.0)
    rate_limit_presence: tuple[int, float] = (60, 60.0)
    #: Event queues one user may hold at once; one more registration drops their oldest idle queue.
    max_queues_per_user: int = 100
    #: A user's presence changes reach their peers at most once per this many seconds (the last one always).
    presence_coalesce_seconds: float = 5.0
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
    #: Who gets the error reports, and who may see the queue dashboard outside development mode.
    admin_emails: tuple[str, ...] = ()
    #: A browser session ends this long after login (a fixed lifetime, not renewed by use), or at logout.
    session_lifetime_seconds: float = 14 * 24 * 3600.0
    #: The push notification gateway (a bouncer in production); None: mobile pushes are not sent.
    push_url: str | None = None
    #: A user's missed messages wait this long, then go out in one email.
    missed_email_window_seconds: float = 120.0
    #: How long a worker's claim on an email or a push holds (``eventbus.claims``): the effect a crashed worker
    #: left undone comes this late, and a worker that takes longer than this over one effect may see it repeated.
    claim_lease_seconds: float = 60.0
    #: Stream addresses of the email mirror: <stream token>@<domain>.
    email_gateway_domain: str = "streams.eventbus.localhost"
    #: The bots that post mirrored emails (when the sender is no user) and system messages.
    mirror_bot_email: str = "mirror-bot@eventbus.localhost"
    notification_bot_email: str = "notification-bot@eventbus.localhost"
    #: Where the slow query summaries are posted, and how slow a request must be to be reported.
    slow_query_stream: str = "logs"
    slow_request_seconds: float = 2.0
    #: Modules of an application's own ``@assign_queue`` processors, imported besides the shipped ones.
    processor_modules: tuple[str, ...] = ()
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
            queue_type=env.get("EVENTBUS_QUEUE_TYPE", cls.queue_type).strip().lower(),
            secrets_file=secrets_file,
            var_dir=Path(env.get("EVENTBUS_VAR_DIR", cls.var_dir)),
            publish_timeout=_number(env, "EVENTBUS_PUBLISH_TIMEOUT", cls.publish_timeout),
            prefetch=int(_number(env, "EVENTBUS_PREFETCH", cls.prefetch)),
            test_queue_path=_path(env, "EVENTBUS_TEST_QUEUE_FILE"),
            database_setting=_database(env),
            port=int(_number(env, "EVENTBUS_PORT", cls.port)),
            server_id=env.get("EVENTBUS_SERVER_ID", cls.server_id),
            sharding=Sharding.parse(env.get("EVENTBUS_TORNADO_SHARDS", ""),
                                    env.get("EVENTBUS_TORNADO_SHARD_OVERRIDES", "")),
            tornado_shard=int(_number(env, "EVENTBUS_TORNADO_SHARD", cls.tornado_shard)),
            trusted_proxies=_names(env, "EVENTBUS_TRUSTED_PROXIES"),
            heartbeat_seconds=_number(env, "EVENTBUS_HEARTBEAT_SECONDS", cls.heartbeat_seconds),
            queue_gc_seconds=_number(env, "EVENTBUS_QUEUE_GC_SECONDS", cls.queue_gc_seconds),
            queue_lifespan_seconds=_number(env, "EVENTBUS_QUEUE_LIFESPAN_SECONDS", cls.queue_lifespan_seconds),
            max_queue_events=int(_number(env, "EVENTBUS_MAX_QUEUE_EVENTS", cls.max_queue_events)),
            max_queue_bytes=int(_number(env, "EVENTBUS_MAX_QUEUE_BYTES", cls.max_queue_bytes)),
            websocket_buffer_bytes=int(_number(env, "EVENTBUS_WEBSOCKET_BUFFER_BYTES", cls.websocket_buffer_bytes)),
            max_body_bytes=int(_number(env, "EVENTBUS_MAX_BODY_BYTES", cls.max_body_bytes)),
            rate_limit_api=_rate(env, "EVENTBUS_RATE_LIMIT_API", cls.rate_limit_api),
            rate_limit_register=_rate(env, "EVENTBUS_RATE_LIMIT_REGISTER", cls.rate_limit_register),
            rate_limit_presence=_rate(env, "EVENTBUS_RATE_LIMIT_PRESENCE", cls.rate_limit_presence),
            max_queues_per_user=int(_number(env, "EVENTBUS_MAX_QUEUES_PER_USER", cls.max_queues_per_user)),
            presence_coalesce_seconds=_number(env, "EVENTBUS_PRESENCE_COALESCE_SECONDS",
                                              cls.presence_coalesce_seconds),
            development=env.get("EVENTBUS_DEVELOPMENT", "").strip().lower() in ("1", "true", "yes"),
            site_url=env.get("EVENTBUS_SITE_URL", cls.site_url),
            smtp_host=env.get("EVENTBUS_SMTP_HOST", cls.smtp_host),
            smtp_port=int(_number(env, "EVENTBUS_SMTP_PORT", cls.smtp_port)),
            smtp_tls=env.get("EVENTBUS_SMTP_TLS", cls.smtp_tls).strip().lower(),
            smtp_user=env.get("EVENTBUS_SMTP_USER") or None,
            email_from=env.get("EVENTBUS_EMAIL_FROM", cls.email_from),
            admin_emails=_names(env, "EVENTBUS_ADMIN_EMAILS"),
            session_lifetime_seconds=_number(env, "EVENTBUS_SESSION_LIFETIME_SECONDS", cls.session_lifetime_seconds),
            push_url=env.get("EVENTBUS_PUSH_URL") or None,
            missed_email_window_seconds=_number(env, "EVENTBUS_MISSED_EMAIL_WINDOW", cls.missed_email_window_seconds),
            claim_lease_seconds=_number(env, "EVENTBUS_CLAIM_LEASE_SECONDS", cls.claim_lease_seconds),
            email_gateway_domain=env.get("EVENTBUS_EMAIL_GATEWAY_DOMAIN", cls.email_gateway_domain),
            mirror_bot_email=env.get("EVENTBUS_MIRROR_BOT_EMAIL", cls.mirror_bot_email),
            notification_bot_email=env.get("EVENTBUS_NOTIFICATION_BOT_EMAIL", cls.notification_bot_email),
            slow_query_stream=env.get("EVENTBUS_SLOW_QUERY_STREAM", cls.slow_query_stream),
            slow_request_seconds=_number(env, "EVENTBUS_SLOW_REQUEST_SECONDS", cls.slow_request_seconds),
            processor_modules=_names(env, "EVENTBUS_PROCESSOR_MODULES"),
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
        self._validate_amqp_urls()
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigurationError(
                f"EVENTBUS_QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}, not {self.queue_type!r}"
            )
        positive = {
            "EVENTBUS_PUBLISH_TIMEOUT": self.publish_timeout, "EVENTBUS_PREFETCH": self.prefetch,
            "EVENTBUS_HEARTBEAT_SECONDS": self.heartbeat_seconds, "EVENTBUS_QUEUE_GC_SECONDS": self.queue_gc_seconds,
            "EVENTBUS_QUEUE_LIFESPAN_SECONDS": self.queue_lifespan_seconds,
            "EVENTBUS_MAX_QUEUE_EVENTS": self.max_queue_events, "EVENTBUS_MAX_QUEUE_BYTES": self.max_queue_bytes,
            "EVENTBUS_WEBSOCKET_BUFFER_BYTES": self.websocket_buffer_bytes,
            "EVENTBUS_MAX_BODY_BYTES": self.max_body_bytes,
            "EVENTBUS_MAX_QUEUES_PER_USER": self.max_queues_per_user,
            "EVENTBUS_SESSION_LIFETIME_SECONDS": self.session_lifetime_seconds,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigurationError(f"{name} must be positive, not {value!r}")
        rates = {"EVENTBUS_RATE_LIMIT_API": self.rate_limit_api,
                 "EVENTBUS_RATE_LIMIT_REGISTER": self.rate_limit_register,
                 "EVENTBUS_RATE_LIMIT_PRESENCE": self.rate_limit_presence}
        for name, (count, seconds) in rates.items():
            if not (count >= 1 and 0 < seconds < math.inf):
                raise ConfigurationError(f"{name} must be REQUESTS/SECONDS, both positive, not {count}/{seconds}")
        if not 0 <= self.presence_coalesce_seconds < math.inf:
            raise ConfigurationError("EVENTBUS_PRESENCE_COALESCE_SECONDS must be 0 or more, "
                                     f"not {self.presence_coalesce_seconds!r}")
        if not self.session_lifetime_seconds <= MAX_SESSION_LIFETIME_SECONDS:
            raise ConfigurationError("EVENTBUS_SESSION_LIFETIME_SECONDS must be at most a year "
                                     f"({MAX_SESSION_LIFETIME_SECONDS:.0f}), not {self.session_lifetime_seconds!r}")
        if not 0 < self.claim_lease_seconds < math.inf:
            raise ConfigurationError(f"EVENTBUS_CLAIM_LEASE_SECONDS must be a positive number of seconds, "
                                     f"not {self.claim_lease_seconds!r}")
        if self.smtp_tls not in ("none", "starttls", "ssl"):
            raise ConfigurationError(f"EVENTBUS_SMTP_TLS must be none, starttls or ssl, not {self.smtp_tls!r}")
        if not 0 < self.port < 65536:
            raise ConfigurationError(f"EVENTBUS_PORT must be a TCP port, not {self.port}")
        if not (self.tornado_shard == int(self.tornado_shard) and 0 <= self.tornado_shard < self.sharding.count):
            raise ConfigurationError(f"EVENTBUS_TORNADO_SHARD must be a shard number from 0 to "
                                     f"{self.sharding.count - 1} (EVENTBUS_TORNADO_SHARDS), not {self.tornado_shard!r}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_address(proxy)
            except ValueError:
                raise ConfigurationError("EVENTBUS_TRUSTED_PROXIES must be IP addresses separated by commas, "
                                         f"not {proxy!r}") from None
        for module in self.processor_modules:
            if not all(part.isidentifier() for part in module.split(".")):
                raise ConfigurationError("EVENTBUS_PROCESSOR_MODULES must be comma-separated module names "
                                         f"(such as myapp.processors), not {module!r}")

    def _validate_amqp_urls(self) -> None:
        urls = self.amqp_urls
        if not urls:
            raise ConfigurationError("EVENTBUS_AMQP_URL must hold at least one amqp:// or amqps:// URL")
        for n, url in enumerate(urls, 1):
            scheme = urllib.parse.urlsplit(url).scheme
            if scheme not in ("amqp", "amqps"):
                where = f"element {n} of " if len(urls) > 1 else ""
                raise ConfigurationError(
                    f"{where}EVENTBUS_AMQP_URL must start with amqp:// or amqps://, not {redact_url(url)!r}"
                )

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The URLs of ``EVENTBUS_AMQP_URL``: one, or each node of a cluster (comma-separated)."""
        return tuple(url.strip() for url in self.amqp_url.split(",") if url.strip())

    @property
    def connection_urls(self) -> tuple[str, ...]:
        """The AMQP URLs to connect with: the password from the secrets file fills a URL without one."""
        return tuple(self._with_password(url) for url in self.amqp_urls)

    @property
    def connection_url(self) -> str:
        """The first of ``connection_urls`` (for tools that take one node)."""
        return self.connection_urls[0]

    def _with_password(self, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.password is not None or not self.rabbitmq_password:
            return url
        user = parts.username or "guest"
        password = urllib.parse.quote(self.rabbitmq_password, safe="")
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))

    def is_admin(self, email: str) -> bool:
        """Whether ``email`` is one of ``EVENTBUS_ADMIN_EMAILS`` (emails compare without case, as the user store's)."""
        return email.strip().lower() in (admin.lower() for admin in self.admin_emails)

    @property
    def secure_cookies(self) -> bool:
        """Cookies go over https only when the site is served over https."""
        return urllib.parse.urlsplit(self.site_url).scheme == "https"

    @property
    def notify_queue(self) -> str:
        """The notify queue of this process's shard (``notify_tornado`` without sharding)."""
        return self.sharding.notify_queue(self.tornado_shard)

    @property
    def return_queue(self) -> str:
        """The return queue of this process's shard; without sharding ``tornado_return``, or
        ``tornado_return.<server id>`` for a process with a server id of its own."""
        if self.sharding.sharded or self.server_id == "tornado":
            return self.sharding.return_queue(self.tornado_shard)
        return f"{self.sharding.return_queue(0)}.{self.server_id}"

    @property
    def database(self) -> Path | str:
        """``EVENTBUS_DATABASE`` (a SQLite file's path, or a PostgreSQL URL), else ``<var>/eventbus.sqlite3``."""
        return self.database_setting or self.var_dir / "eventbus.sqlite3"

    @property
    def test_queue_file(self) -> Path:
        """``EVENTBUS_TEST_QUEUE_FILE``, else ``<var>/test_queue.jsonl``."""
        return self.test_queue_path or self.var_dir / "test_queue.jsonl"

    @property
    def redacted_url(self) -> str:
        """The broker URL(s) for messages and logs, with any password replaced by ``***``."""
        return ",".join(map(redact_url, self.amqp_urls))

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


def _database(env: Mapping[str, str]) -> Path | str | None:
    """``EVENTBUS_DATABASE``: a SQLite file's path, or a PostgreSQL URL. Any other URL would be taken for a
    relative path and "work" in a folder named after its scheme: it is refused, as is a PostgreSQL URL that
    names no database."""
    raw = (env.get("EVENTBUS_DATABASE") or "").strip()
    if not raw:
        return None
    if not URL_LOOKING.match(raw):
        return Path(raw)
    scheme = raw.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ConfigurationError(f"EVENTBUS_DATABASE must be the path of a SQLite file or a postgresql:// URL, "
                                 f"not {redact_url(raw)!r}")
    parts = urllib.parse.urlsplit(raw)
    if not parts.hostname or not parts.path.strip("/"):
        raise ConfigurationError(f"EVENTBUS_DATABASE: a PostgreSQL URL names its host and database "
                                 f"(postgresql://user:password@host:5432/dbname), not {redact_url(raw)!r}")
    return raw


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, not {raw!r}") from None


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list, each item stripped, empty ones dropped."""
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _rate(env: Mapping[str, str], name: str, default: tuple[int, float]) -> tuple[int, float]:
    """A rate limit written ``REQUESTS/SECONDS`` (``1200/60``: 1,200 requests a minute)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    count, slash, seconds = raw.partition("/")
    try:
        if slash and count.strip().isdigit():
            return int(count), float(seconds)
    except ValueError:
        pass
    raise ConfigurationError(f"{name} must be REQUESTS/SECONDS (such as 1200/60), not {raw!r}")


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
