"""The private node launcher's command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus.queue.rabbitmq_node import RabbitMQNode, main


def test_status_of_the_running_node(rabbitmq_node: RabbitMQNode, capsys: pytest.CaptureFixture[str]) -> None:
    name = rabbitmq_node.nodename.split("@")[0]
    assert main(["status", "--dir", str(rabbitmq_node.base_dir), "--name", name]) == 0
    assert f"is up: {rabbitmq_node.url}" in capsys.readouterr().out


def test_status_of_a_node_never_started(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--dir", str(tmp_path / "none")]) == 3
    assert "not running" in capsys.readouterr().out


def test_bad_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["reboot"])
    assert exit_.value.code == 2
