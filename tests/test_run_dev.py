"""run_dev.py, README's run command: the system comes up, works, and goes away without leftovers."""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from eventbus.queue.rabbitmq_node import free_port
from eventbus.settings import Settings
from eventbus.users import UserStore
from tests.conftest import wait_for
from tests.shards import require_nginx
from tests.workers import ROOT


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def call(url: str, email: str, api_key: str, data: dict[str, str] | None = None) -> tuple[int, Any]:
    token = base64.b64encode(f"{email}:{api_key}".encode()).decode()
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 (behind nginx, once a shard is up)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:  # refused, or nginx's 502 while no shard listens yet
        return False


def run_system(tmp_path: Path, *flags: str, amqp_url: str | None = None) -> None:
    """Start run_dev.py, send a message through it, stop it; check nothing is left running."""
    port = free_port()
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    env.update(EVENTBUS_VAR_DIR=str(var), PYTHONPATH=str(ROOT))
    if amqp_url:
        env["EVENTBUS_AMQP_URL"] = amqp_url
    log = tmp_path / "run_dev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, str(ROOT / "run_dev.py"), "--port", str(port), *flags],
                                   env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/api/v1/server_settings"), timeout=60, what="the web server")
        iago = UserStore(Settings(var_dir=var).database).get_by_email("iago@example.com")
        assert iago is not None, "run_dev creates the development users"
        status, body = call(f"{base}/api/v1/messages", iago.email, iago.api_key,
                            {"type": "stream", "to": "Denmark", "topic": "run_dev", "content": "it **works**"})
        assert (status, body["result"]) == (200, "success"), body
        status, history = call(f"{base}/api/v1/messages?anchor=newest&num_before=5&num_after=0", iago.email,
                               iago.api_key)
        assert history["messages"][-1]["content"] == "<p>it <strong>works</strong></p>"
        with urllib.request.urlopen(f"{base}/devtools/emails?format=json", timeout=10) as response:
            assert json.loads(response.read())["result"] == "success"
        children = children_of(process.pid)
        assert children, "run_dev started its processes"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 30
        left = [pid for pid in children if alive(pid)]
        assert not left, f"processes left running: {left}"
        assert "stopped" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()


def test_run_dev_on_the_in_process_broker(tmp_path: Path) -> None:
    run_system(tmp_path, "--memory-broker")


def test_run_dev_with_rabbitmq(tmp_path: Path, settings: Settings, rabbitmq_node: Any) -> None:
    run_system(tmp_path, "--all-in-one", amqp_url=settings.amqp_url)


def test_run_dev_with_two_shards_behind_nginx(tmp_path: Path, settings: Settings, rabbitmq_node: Any) -> None:
    require_nginx()
    run_system(tmp_path, "--all-in-one", "--shards", "2", amqp_url=settings.amqp_url)
    assert "2 Tornado shards behind nginx" in (tmp_path / "run_dev.log").read_text()


@pytest.mark.parametrize("flag", ["--help"])
def test_run_dev_help(flag: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "run_dev.py"), flag], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "--memory-broker" in result.stdout


def test_a_code_change_restarts_the_processes_that_run_that_code() -> None:
    spec = importlib.util.spec_from_file_location("run_dev", ROOT / "run_dev.py")
    assert spec is not None and spec.loader is not None
    run_dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_dev)
    assert run_dev.groups_for(["eventbus/processors/queues/email.py"]) == {"workers"}
    assert run_dev.groups_for(["eventbus/devtools/smtp_sink.py"]) == {"devtools"}
    assert run_dev.groups_for(["eventbus/web/devtools.py"]) == {"tornado"}  # Tornado serves the pages
    assert run_dev.groups_for(["eventbus/codec.py"]) == {"tornado", "workers", "devtools"}
    # Without RabbitMQ one process runs everything: any change restarts it.
    args = argparse.Namespace(port=9991, all_in_one=False, streamlined=False)
    [embedded] = run_dev.plan(args, {}, True, {"push": 1, "smtp": 2, "mirror": 3})
    assert embedded.groups == {"tornado", "workers", "devtools"}
