"""The user store on SQLite and on PostgreSQL: emails without case, keys checked, deactivation; and the command
line against a PostgreSQL database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from eventbus.database import ci_equal, open_database
from eventbus.schema import users
from eventbus.settings import Settings
from eventbus.users import UserError, UserStore
from tests.workers import ROOT, run_cli


def test_an_email_is_one_user_whatever_its_case(database: Path | str) -> None:
    users = UserStore(database)
    iago = users.create_user(" Iago@Example.com ", "Iago")
    assert iago.email == "Iago@Example.com"
    with pytest.raises(UserError, match="exists already"):
        users.create_user("IAGO@example.COM")
    assert users.get_by_email("iago@EXAMPLE.com") == iago
    assert users.ensure_user("iago@example.com") == iago
    assert users.get(iago.id) == iago and users.get(iago.id + 1) is None
    assert users.authenticate("IAGO@example.com", iago.api_key) == iago
    assert users.authenticate("iago@example.com", iago.api_key + "x") is None
    assert users.authenticate("iago@example.com", "\u00e9\udcff") is None  # not ASCII, not UTF-8: refused, no error
    assert users.authenticate("nobody@example.com", iago.api_key) is None


def test_a_deactivated_user_cannot_authenticate_and_is_no_longer_active(database: Path | str) -> None:
    users = UserStore(database)
    iago, othello, cassio = (users.create_user(f"{name}@example.com", name.title())
                             for name in ("iago", "othello", "cassio"))
    assert users.active_ids() == [iago.id, othello.id, cassio.id]
    assert users.active_ids(besides=othello.id) == [iago.id, cassio.id]
    assert users.get_by_full_name("OTHELLO") == othello
    assert users.deactivate(othello.id) and not users.deactivate(cassio.id + 1)
    assert users.authenticate(othello.email, othello.api_key) is None
    assert users.active_ids() == [iago.id, cassio.id]
    assert users.get_by_full_name("Othello") is None  # mentions reach active users only
    assert [(u.email, u.is_active) for u in users.all()] == [(iago.email, True), (othello.email, False),
                                                              (cassio.email, True)]


def test_the_command_line_creates_a_user_in_a_postgresql_database(postgresql_url: str, tmp_path: Path) -> None:
    # Given EVENTBUS_DATABASE naming a PostgreSQL database,
    settings = Settings(broker="memory", var_dir=tmp_path / "var", database_setting=postgresql_url)
    # when an operator creates a user,
    result = run_cli(settings, "create_user", "desdemona@example.com", "--full-name", "Desdemona")
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    # then the user is in that database, and authenticates there (as the servers and workers will),
    user = UserStore(postgresql_url).authenticate("desdemona@example.com", created["api_key"])
    assert user is not None and (user.id, user.full_name) == (created["user_id"], "Desdemona")
    # and nowhere else: it is a row of PostgreSQL's, and no SQLite file was made instead.
    with open_database(postgresql_url).transaction() as db:
        assert list(db.scalars(select(users.c.email))) == ["desdemona@example.com"]
    assert not (tmp_path / "var" / "eventbus.sqlite3").exists() and not (ROOT / "postgresql:").exists()
    again = run_cli(settings, "create_user", "DESDEMONA@example.com")
    assert again.returncode == 2 and "exists already" in again.stderr


def test_a_user_is_found_by_email_through_the_index(tmp_path: Path) -> None:
    # Every authentication that is not cached looks a user up by email: on SQLite, that must not read every user.
    users_store = UserStore(tmp_path / "eventbus.sqlite3")
    with users_store.database.transaction() as db:
        query = select(users.c.id).where(ci_equal(users.c.email, "iago@example.com"))
        compiled = query.compile(db, compile_kwargs={"literal_binds": True})
        plan = " ".join(row[-1] for row in db.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
    assert plan.startswith("SEARCH users USING") and "INDEX" in plan, plan  # not SCAN: every row


def test_users_read_ahead_for_a_batch_are_the_users_each_lookup_finds(database: Path | str) -> None:
    """A worker reads a batch's senders and mentioned users ahead, in two queries: within the batch, every lookup
    answers as it would alone (names in any case, a deactivated user, two users of one name, no such user)."""
    store = UserStore(database)
    iago = store.create_user("iago@example.com", "Iago")
    first, second = store.create_user("twin1@example.com", "Twin"), store.create_user("twin2@example.com", "Twin")
    gone = store.create_user("gone@example.com", "Gone")
    store.deactivate(gone.id)
    names = ["Iago", "IAGO", "iago", "Twin", "Gone", "Nobody", "Éloïse"]
    ids = [iago.id, first.id, gone.id, 999, 2**70]
    alone = ([store.get_by_full_name(name) for name in names], [store.get(i) if i < 2**63 else None for i in ids])
    with store.remembering():
        store.read_ahead(ids=ids, full_names=names)
        store.deactivate(iago.id)  # read ahead: within the batch, lookups answer as at its start
        ahead = ([store.get_by_full_name(name) for name in names], [store.get(i) if i < 2**63 else None for i in ids])
    assert ahead == alone
    assert alone[0][:3] == [iago] * 3 and alone[0][4:6] == [None, None]
    assert alone[0][3] in (first, second)
    after = store.get(iago.id)  # after the batch, read again
    assert after is not None and after.is_active is False
