"""The error store keeps every failed event, written safely by several processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from eventbus.queue import ErrorStore


def _write_many(var_dir: str, writer: int) -> None:
    store = ErrorStore(var_dir)
    for n in range(200):
        store.record("shared", {"writer": writer, "n": n, "pad": "x" * 500}, error="failed", tries=3)


def test_concurrent_writers_from_several_processes_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_write_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    entries = ErrorStore(tmp_path).read("shared")
    assert len(entries) == 800
    assert {(e["event"]["writer"], e["event"]["n"]) for e in entries} == {(w, n) for w in range(4) for n in range(200)}
    assert all(e["tries"] == 3 and e["error"] == "failed" for e in entries)


def test_take_removes_only_when_the_handler_succeeds(tmp_path: Path) -> None:
    store = ErrorStore(tmp_path)
    store.record("q", {"n": 1}, error="e1")
    store.record("q", raw=b"not json", error="e2")

    def broken(entries: list[dict[str, Any]]) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        store.take("q", broken)
    assert store.count("q") == 2
    taken: list[dict[str, Any]] = []
    assert store.take("q", taken.extend) == 2
    assert [e.get("event") for e in taken] == [{"n": 1}, None]
    assert taken[1]["raw"] == "not json"
    assert store.count("q") == 0
    assert store.queues() == ["q"]


def test_queue_names_cannot_escape_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid queue name"):
        ErrorStore(tmp_path).record("../../etc/x", {"n": 1}, error="e")
