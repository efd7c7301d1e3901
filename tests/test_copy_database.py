"""``eventbus copy_database``: a small install's SQLite file moved to PostgreSQL, every store with it."""

from __future__ import annotations

import json
from pathlib import Path

from eventbus.messages import HistoryQuery
from eventbus.narrow import parse_narrow
from eventbus.sessions import SessionStore
from eventbus.settings import Settings
from eventbus.users import UserStore
from tests.test_message_store import World
from tests.workers import run_cli


def test_a_sqlite_install_moves_to_postgresql_with_its_ids_and_search(tmp_path: Path, postgresql_url: str) -> None:
    sqlite_file = tmp_path / "eventbus.sqlite3"
    before = World(sqlite_file)
    iago, othello = before.iago, before.othello
    gate = before.send(iago, before.denmark, "The guards are at the gate", "castle")
    psst = before.send(othello, [iago, othello], "psst")
    before.store.react("r1", gate, othello.id, {"emoji_name": "smile", "emoji_code": "1f642",
                                                "reaction_type": "unicode_emoji"}, True)
    session = SessionStore(sqlite_file).start(iago.id, 3600)
    settings = Settings(broker="memory", var_dir=tmp_path / "var")

    copied = run_cli(settings, "copy_database", postgresql_url, EVENTBUS_DATABASE=str(sqlite_file))
    assert copied.returncode == 0, copied.stderr
    rows = json.loads(copied.stdout)["rows"]
    assert rows["messages"] == 2 and rows["users"] == 3 and rows["reactions"] == 1 and rows["sessions"] == 1

    after = World.__new__(World)  # the same people and streams, read back from PostgreSQL
    after.store, after.iago, after.othello, after.denmark = (before.store.__class__(postgresql_url), iago, othello,
                                                             before.denmark)
    assert UserStore(postgresql_url).authenticate(iago.email, iago.api_key) == iago
    assert SessionStore(postgresql_url).live(session.id) is not None
    [found] = after.store.history(iago.id, HistoryQuery(parse_narrow([["search", "guard"]]), num_before=9))["messages"]
    assert found["id"] == gate and found["reactions"][0]["emoji_name"] == "smile"
    assert after.ids(iago, [["dm", othello.email]]) == [psst]
    # New rows continue after the ids copied, as they would have in SQLite.
    assert after.send(othello, after.denmark, "a new one") == psst + 1
    assert UserStore(postgresql_url).create_user("emilia@example.com").id == 4

    again = run_cli(settings, "copy_database", postgresql_url, EVENTBUS_DATABASE=str(sqlite_file))
    assert again.returncode != 0
    assert "is not empty (its users table has rows): copy into a new, empty database" in again.stderr
    assert "Traceback" not in again.stderr
