"""Settings come from EVENTBUS_* variables and the secrets file, never from code."""

import re
from pathlib import Path

import pytest

from eventbus.errors import ConfigurationError
from eventbus.queue.rabbitmq_node import free_port
from eventbus.settings import DEFAULT_AMQP_URL, Settings, redact_url
from tests.workers import ROOT, run_cli


def test_defaults_when_nothing_is_set() -> None:
    settings = Settings.from_env({})
    assert settings.broker == "amqp"
    assert settings.amqp_url == DEFAULT_AMQP_URL
    assert settings.var_dir == Path("var")
    assert settings.prefetch == 100


def test_variables_override_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "EVENTBUS_BROKER": "memory",
        "EVENTBUS_AMQP_URL": "amqp://u:p@rabbit:5672/%2F",
        "EVENTBUS_VAR_DIR": str(tmp_path),
        "EVENTBUS_PUBLISH_TIMEOUT": "2.5",
        "EVENTBUS_PREFETCH": "7",
        "EVENTBUS_PROCESSOR_MODULES": " myapp.processors, ,other ",
    })
    assert (settings.broker, settings.amqp_url, settings.var_dir) == ("memory", "amqp://u:p@rabbit:5672/%2F", tmp_path)
    assert (settings.publish_timeout, settings.prefetch) == (2.5, 7)
    assert settings.processor_modules == ("myapp.processors", "other")


def test_password_comes_from_the_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.conf"
    secrets.write_text("[secrets]\nrabbitmq_password = s3cr/t@!\nshared_secret = abc\n")
    settings = Settings.from_env({
        "EVENTBUS_AMQP_URL": "amqp://eventbus@rabbit:5672/%2F",
        "EVENTBUS_SECRETS_FILE": str(secrets),
    })
    assert settings.connection_url == "amqp://eventbus:s3cr%2Ft%40%21@rabbit:5672/%2F"
    assert settings.shared_secret == "abc"
    assert "s3cr" not in settings.redacted_url


def test_redacted_url_hides_the_password() -> None:
    assert redact_url("amqp://user:hunter2@host:5672/%2F") == "amqp://user:***@host:5672/%2F"
    assert redact_url("amqp://host/") == "amqp://host/"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("EVENTBUS_BROKER", "redis", "EVENTBUS_BROKER must be one of amqp, memory"),
        ("EVENTBUS_AMQP_URL", "http://x", "EVENTBUS_AMQP_URL must start with amqp://"),
        ("EVENTBUS_PREFETCH", "many", "EVENTBUS_PREFETCH must be a number"),
        ("EVENTBUS_PUBLISH_TIMEOUT", "0", "EVENTBUS_PUBLISH_TIMEOUT must be positive"),
        ("EVENTBUS_PROCESSOR_MODULES", "myapp.processors;other", "EVENTBUS_PROCESSOR_MODULES must be comma-sep"),
    ],
)
def test_bad_values_get_a_clear_error(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_env({variable: value})


def test_queues_are_bounded_by_bytes_as_well_as_by_events() -> None:
    assert Settings.from_env({}).max_queue_bytes == 4 * 1024 * 1024
    assert Settings.from_env({"EVENTBUS_MAX_QUEUE_BYTES": "65536"}).max_queue_bytes == 65536
    with pytest.raises(ConfigurationError, match="EVENTBUS_MAX_QUEUE_BYTES must be positive"):
        Settings.from_env({"EVENTBUS_MAX_QUEUE_BYTES": "0"})


# -- a cluster: several URLs, quorum queues; configuration mistakes named at start ----------------------------------

def test_several_amqp_urls_are_the_nodes_of_a_cluster(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.conf"
    secrets.write_text("[secrets]\nrabbitmq_password = hunter2\n")
    settings = Settings.from_env({
        "EVENTBUS_AMQP_URL": "amqp://eventbus@rabbit1:5672/%2F, amqp://eventbus@rabbit2:5672/%2F,"
                             "amqps://other:own@rabbit3:5671/%2F",
        "EVENTBUS_SECRETS_FILE": str(secrets),
        "EVENTBUS_QUEUE_TYPE": "Quorum",
    })
    assert settings.connection_urls == ("amqp://eventbus:hunter2@rabbit1:5672/%2F",
                                        "amqp://eventbus:hunter2@rabbit2:5672/%2F",
                                        "amqps://other:own@rabbit3:5671/%2F")
    assert settings.redacted_url == ("amqp://eventbus@rabbit1:5672/%2F,amqp://eventbus@rabbit2:5672/%2F,"
                                     "amqps://other:***@rabbit3:5671/%2F")
    assert settings.queue_type == "quorum"
    assert Settings.from_env({}).queue_type == "classic"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # Before: accepted, and failing later as an access error for a vhost named "/,amqp".
        ("EVENTBUS_AMQP_URL", "amqp://a:5672/%2F,http://b:5672/", "element 2 of EVENTBUS_AMQP_URL must start with "
                                                                  "amqp:// or amqps://, not 'http://b:5672/'"),
        ("EVENTBUS_AMQP_URL", " , ", "EVENTBUS_AMQP_URL must hold at least one amqp:// or amqps:// URL"),
        ("EVENTBUS_QUEUE_TYPE", "stream", "EVENTBUS_QUEUE_TYPE must be one of classic, quorum, not 'stream'"),
        ("EVENTBUS_DATABASE", "postgresql://eventbus:pw@db",
         "EVENTBUS_DATABASE: a PostgreSQL URL names its host and database (postgresql://user:password@host:5432/"
         "dbname), not 'postgresql://eventbus:***@db'"),
        ("EVENTBUS_DATABASE", "sqlite:///var/x.db",
         "EVENTBUS_DATABASE must be the path of a SQLite file or a postgresql:// URL, not 'sqlite:///var/x.db'"),
        ("EVENTBUS_CLAIM_LEASE_SECONDS", "0", "EVENTBUS_CLAIM_LEASE_SECONDS must be a positive number of seconds, "
                                              "not 0.0"),
        ("EVENTBUS_CLAIM_LEASE_SECONDS", "inf", "EVENTBUS_CLAIM_LEASE_SECONDS must be a positive number of seconds, "
                                                "not inf"),
    ],
)
def test_configuration_mistakes_name_the_setting(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Settings.from_env({variable: value})


def test_a_database_path_is_still_a_path() -> None:
    assert Settings.from_env({"EVENTBUS_DATABASE": "var/data:1/eventbus.sqlite3"}).database == \
        Path("var/data:1/eventbus.sqlite3")


def test_a_postgresql_url_is_taken_as_one() -> None:
    url = "postgresql://eventbus:pw@db.example.com:5432/eventbus"
    assert Settings.from_env({"EVENTBUS_DATABASE": url}).database == url


def test_the_command_line_names_an_unreachable_postgresql_database_at_start(tmp_path: Path) -> None:
    settings = Settings(broker="memory", var_dir=tmp_path / "var")
    closed = f"postgresql://eventbus:secret@127.0.0.1:{free_port()}/eventbus"
    result = run_cli(settings, "create_user", "iago@example.com", EVENTBUS_DATABASE=closed)
    assert result.returncode == 1
    assert "EVENTBUS_DATABASE: cannot use" in result.stderr and "secret" not in result.stderr
    assert "Traceback" not in result.stderr
    assert not (ROOT / "postgresql:").exists() and not (tmp_path / "postgresql:").exists()
