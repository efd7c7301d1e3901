"""Django integration: events published only after commit, never for a rolled-back transaction."""

from __future__ import annotations

import os
import subprocess
import sys

from eventbus.queue.rabbitmq import RabbitMQBroker
from eventbus.settings import Settings
from tests.workers import ROOT

SCENARIO = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", run_syncdb=True, verbosity=0)
from tests.django_project.orders.models import Order, place_order
from eventbus.settings import get_settings
assert get_settings().var_dir.name == "djangovar", get_settings()
place_order("book")
try:
    place_order("car", fail=True)
except RuntimeError:
    pass
assert [o.item for o in Order.objects.all()] == ["book"]
try:
    from eventbus.django import queue_event_on_commit
    queue_event_on_commit("order_events", {"bad": object()})
except ValueError as e:
    print("refused:", e)
"""


def test_events_follow_commits_only(settings: Settings, broker: RabbitMQBroker, tmp_path: object) -> None:
    for queue in ("order_events", "notify_tornado"):
        if broker.queue_info(queue).exists:
            broker.purge(queue)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django_project.settings", "PYTHONPATH": str(ROOT),
           "TEST_DJANGO_DB": str(settings.var_dir.parent / "django.sqlite3"),
           "TEST_DJANGO_AMQP_URL": settings.amqp_url, "TEST_DJANGO_VAR_DIR": str(settings.var_dir.parent / "djangovar")}
    result = subprocess.run([sys.executable, "-c", SCENARIO], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused: event is not JSON-serializable" in result.stdout
    # The committed order was announced once on each queue; the rolled-back one never.
    assert broker.queue_info("order_events").depth == 1
    assert broker.queue_info("notify_tornado").depth == 1
    got: list[object] = []

    def collect(events: list[object]) -> None:
        got.extend(events)
        consumer.stop()

    consumer = broker.consumer("order_events", collect)
    consumer.run()
    assert got == [{"order_id": 1, "item": "book"}]
