"""The worker framework in-process, on the memory broker: registry, retries, error store, timeouts, stats."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eventbus.errors import ConfigurationError
from eventbus.processors.registry import assign_queue, get_worker, get_worker_class, registered_queues
from eventbus.processors.stats import read_stats
from eventbus.processors.worker import QueueProcessingWorker
from eventbus.queue import MemoryBroker
from eventbus.settings import Settings, set_settings
from tests.conftest import eventbus_command, wait_for, worker_threads


@pytest.fixture
def memory(tmp_path: Path) -> MemoryBroker:
    return MemoryBroker(Settings(broker="memory", var_dir=tmp_path))


@pytest.fixture
def running(memory: MemoryBroker) -> Iterator[Any]:
    """Start workers for some queues in threads; stop them at the end."""
    with worker_threads(memory) as start:
        yield start


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- registry ---------------------------------------------------------------------------


def test_every_processor_module_is_found() -> None:
    assert {"test", "noop", "noop_batch", "test_batch", "test_async"} <= set(registered_queues())


def test_a_queue_cannot_be_assigned_twice() -> None:
    with pytest.raises(ConfigurationError, match=r"'test' is already assigned to eventbus\.processors"):
        @assign_queue("test")
        class Another(QueueProcessingWorker):
            def consume(self, event: Any) -> None:
                pass


def test_unknown_or_bad_options_fail_at_import_time() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option.*retries.*known:.*tries"):
        assign_queue("typo_queue", retries=5)
    with pytest.raises(ConfigurationError, match="tries must be a whole number"):
        assign_queue("bad_tries", tries=0)
    with pytest.raises(ConfigurationError, match="timeout must be a number of seconds"):
        assign_queue("bad_timeout", timeout=-1)


def test_only_worker_classes_can_be_assigned() -> None:
    with pytest.raises(ConfigurationError, match="must decorate a worker class"):
        assign_queue("not_a_worker")(dict)  # type: ignore[type-var]


def test_options_given_to_one_worker_leave_the_queues_own(memory: MemoryBroker) -> None:
    # Given the test queue, registered with a retry delay of 0.2 s,
    # when one worker is built with a shorter one
    quick = get_worker("test", memory, retry_delay=0.01)
    # then that worker has it, and the queue and other workers keep theirs
    assert quick.options.retry_delay == 0.01
    assert get_worker("test", memory).options.retry_delay == get_worker_class("test").options.retry_delay == 0.2
    with pytest.raises(ConfigurationError, match=r"worker for 'test': unknown option\(s\) retries; known:.*tries"):
        get_worker("test", memory, retries=1)


@pytest.fixture
def app_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """``use(module)``: the process's settings name ``module`` (in tmp_path) as the application's processors."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def use(module: str) -> None:
        set_settings(Settings(var_dir=tmp_path, processor_modules=(module,)))

    yield use
    set_settings(None)


def test_an_applications_processor_module_comes_from_the_settings(tmp_path: Path,
                                                                   app_settings: Callable[[str], None]) -> None:
    # Given an application's processor module, named in the settings (EVENTBUS_PROCESSOR_MODULES)
    (tmp_path / "app_processors_in_settings.py").write_text(
        "from eventbus.processors.registry import assign_queue\n"
        "from eventbus.processors.worker import QueueProcessingWorker\n\n\n"
        "@assign_queue('app_queue_from_settings', enabled=False)\n"
        "class AppWorker(QueueProcessingWorker):\n"
        "    def consume(self, event):\n"
        "        pass\n")
    app_settings("app_processors_in_settings")
    # Then its queue is registered
    assert get_worker_class("app_queue_from_settings").__name__ == "AppWorker"
    # and a module that cannot be imported is named in the error
    app_settings("no_such_app_module")
    with pytest.raises(ConfigurationError, match="EVENTBUS_PROCESSOR_MODULES names 'no_such_app_module'"):
        registered_queues()


def test_unknown_queue_names_the_registered_ones(memory: MemoryBroker) -> None:
    with pytest.raises(ConfigurationError, match=r"no processor for queue 'nope'.*test_batch"):
        get_worker("nope", memory)


# -- delivery -------------------------------------------------------------------------


def test_memory_mode_runs_the_processor_in_process(memory: MemoryBroker, running: Any) -> None:
    running("test")
    for n in range(5):
        memory.publish("test", {"id": n})
    memory.join("test", timeout=10)
    assert [e["id"] for e in lines(memory.settings.test_queue_file)] == list(range(5))


def test_batches_are_bounded(memory: MemoryBroker, running: Any) -> None:
    memory.publish_many("test_batch", [{"id": n} for n in range(35)])
    running("test_batch")
    memory.join("test_batch", timeout=10)
    batches = [entry["ids"] for entry in lines(memory.settings.var_dir / "test_batch.jsonl")]
    assert sorted(i for ids in batches for i in ids) == list(range(35))
    assert max(map(len, batches)) == 10


def test_failed_event_is_retried_then_stored_then_replayed(memory: MemoryBroker, running: Any) -> None:
    broken = memory.settings.var_dir / "flaky_broken"
    broken.touch()
    running("test_flaky")
    memory.publish("test_flaky", {"id": "f1"})
    memory.join("test_flaky", timeout=10)
    [entry] = memory.error_store.read("test_flaky")
    assert entry["event"] == {"id": "f1"}  # without the framework's failed_tries
    assert entry["tries"] == 3
    assert entry["error"] == "ConnectionError: downstream service is down"
    assert "Traceback" in entry["traceback"]
    assert lines(memory.settings.var_dir / "test_flaky.jsonl") == []

    broken.unlink()
    assert eventbus_command(memory, "replay_errors", "test_flaky") == 0
    memory.join("test_flaky", timeout=10)
    assert lines(memory.settings.var_dir / "test_flaky.jsonl") == [{"id": "f1"}]
    assert memory.error_store.read("test_flaky") == []


def test_events_a_batch_processor_failed_itself_are_not_failed_again(memory: MemoryBroker, running: Any) -> None:
    running("test_partial")
    memory.publish_many("test_partial", [{"id": 1, "bad": True}, {"id": 2, "raise": True}])
    wait_for(lambda: memory.error_store.count("test_partial") >= 2, what="both events in the error store")
    memory.join("test_partial", 5)
    stored = {e["event"]["id"]: e["error"] for e in memory.error_store.read("test_partial")}
    assert stored == {1: "PermanentError: a bad event", 2: "RuntimeError: the rest of the batch failed"}
    assert memory.error_store.count("test_partial") == 2


def test_a_failing_event_does_not_hold_up_the_ones_behind_it(memory: MemoryBroker, running: Any) -> None:
    running("test")
    memory.publish_many("test", [{"id": 0, "raise": True}, {"id": 1}, {"id": 2}])
    wait_for(lambda: len(lines(memory.settings.test_queue_file)) == 2, what="the good events")
    assert memory.error_store.read("test") == []  # the failing one is still being retried
    memory.join("test", timeout=10)
    assert [e["event"]["id"] for e in memory.error_store.read("test")] == [0]


def test_event_that_is_not_an_object_goes_straight_to_the_error_store(memory: MemoryBroker, running: Any) -> None:
    running("test")
    memory.publish_many("test", [[1, 2], "text", {"id": 1}])
    memory.publish_bodies("test", [b"{broken"])
    memory.join("test", timeout=10)
    errors = memory.error_store.read("test")
    assert [e.get("event", e.get("raw")) for e in errors] == [[1, 2], "text", "{broken"]
    assert errors[0]["error"] == "event is not a JSON object"
    assert lines(memory.settings.test_queue_file) == [{"id": 1}]


# -- timeouts -------------------------------------------------------------------------


@pytest.mark.parametrize("queue", ["test_slow", "test_async"])
def test_an_event_over_its_time_limit_fails_and_the_next_goes_on(memory: MemoryBroker, running: Any,
                                                                 queue: str) -> None:
    running(queue)
    memory.publish_many(queue, [{"id": "slow", "sleep": 3}, {"id": "quick"}])
    memory.join(queue, timeout=10)
    [entry] = memory.error_store.read(queue)
    assert entry["event"]["id"] == "slow"
    assert entry["error"].startswith("ProcessingTimeout")
    assert lines(memory.settings.var_dir / f"{queue}.jsonl") == [{"id": "quick"}]


# -- stats ----------------------------------------------------------------------------


def test_stats_file_after_the_queue_ran_empty(memory: MemoryBroker, running: Any) -> None:
    memory.publish_many("test", [{"id": n} for n in range(7)] + [{"id": "bad", "raise": True}])
    running("test")
    memory.join("test", timeout=10)
    wait_for(lambda: (read_stats(memory.settings.var_dir, "test") or {}).get("failed") == 3,
             what="stats counting the three failed tries")
    stats = read_stats(memory.settings.var_dir, "test")
    assert stats is not None
    assert stats["processed"] == 7
    assert stats["consumed_since_last_emptied"] == 0
    assert stats["queue_last_emptied_timestamp"] <= stats["update_time"]
    assert 0 < stats["recent_average_consume_time"] < 1
