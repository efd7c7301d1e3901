"""A private PostgreSQL server, from Debian's ``postgresql`` package, for development and the tests.

Its own data folder, port and socket folder, all under one folder; it never
meets the system's PostgreSQL. ``initdb`` and ``pg_ctl`` refuse to run as
root: as root, they run as the ``postgres`` user (``runuser``), and the
folder is given to that user. The server listens on 127.0.0.1 only and
trusts connections from there (a development and test server, never a
production one), as the superuser ``eventbus``::

    python -m eventbus.devtools.postgresql start --dir var/postgresql   # prints its URL
    python -m eventbus.devtools.postgresql stop --dir var/postgresql

``durable=False`` turns fsync off: for the tests, whose databases are thrown
away; the benchmarks run it durable, like SQLite.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

from eventbus.queue.rabbitmq_node import free_port

#: Where Debian's postgresql package puts the server's programs (the newest version installed is used).
BIN_ROOT = Path("/usr/lib/postgresql")
#: The user ``initdb`` and ``pg_ctl`` run as when we are root (Debian's package makes it).
SYSTEM_USER = "postgres"
#: The superuser of a private server, and its first database.
SUPERUSER = "eventbus"
#: Seconds a start or stop may take (a start takes well under one here).
TIMEOUT = 60


class PostgreSQLError(RuntimeError):
    """The server could not be set up, started or stopped; the message says why and where the log is."""


def bin_dir() -> Path | None:
    """The folder of the newest installed PostgreSQL's programs, if any."""
    versions = sorted((p for p in BIN_ROOT.glob("*/bin") if (p / "pg_ctl").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def is_installed() -> bool:
    return bin_dir() is not None


class PostgreSQLServer:
    """A private server with its data under ``root``; ``start`` makes it the first time."""

    def __init__(self, root: Path | str, port: int | None = None, durable: bool = True) -> None:
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "postgresql.log"
        port_file = self.root / "port"
        self.port = port or (int(port_file.read_text()) if port_file.exists() else free_port())
        self.durable = durable
        found = bin_dir()
        if found is None:
            raise PostgreSQLError("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bin = found

    @property
    def url(self) -> str:
        """The URL of the server's first database (``EVENTBUS_DATABASE``)."""
        return self.database_url(SUPERUSER)

    def database_url(self, name: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def start(self) -> PostgreSQLServer:
        """Make the data folder if needed, and start the server; returns once it accepts connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "port").write_text(str(self.port))
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            self._give_to_system_user()
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--locale=C.UTF-8")
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=300"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", str(TIMEOUT), "start")
        self.create_database(SUPERUSER)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(TIMEOUT), "stop")

    def create_database(self, name: str) -> str:
        """Make the database ``name`` unless it exists (a name of letters, digits and _); its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a database name: {name!r}")
        import psycopg

        with psycopg.connect(self.database_url("postgres"), autocommit=True) as connection:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                connection.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def _give_to_system_user(self) -> None:
        user = pwd.getpwnam(SYSTEM_USER)
        # The server must reach its folder through every parent: a private temp folder is not enough.
        for folder in (self.root, *self.root.parents):
            if folder == Path("/"):
                break
            if folder.stat().st_uid == 0 and not folder.stat().st_mode & 0o001:
                folder.chmod(folder.stat().st_mode | 0o001)
        for path in (self.root, self.sockets, *self.root.glob("*")):
            if path.name != "data":
                os.chown(path, user.pw_uid, user.pw_gid)
        if self.data.exists():
            shutil.chown(self.data, SYSTEM_USER, SYSTEM_USER)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT + 10, check=False,
                              cwd=self.root)
        if done.returncode != 0:
            raise PostgreSQLError(f"{program} failed after {time.monotonic() - started:.1f} s "
                                  f"(exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}; "
                                  f"log: {self.log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eventbus.devtools.postgresql", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--dir", type=Path, default=Path("var/postgresql"))
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    server = PostgreSQLServer(args.dir, port=args.port)
    try:
        if args.action == "start":
            print(server.start().url)
        else:
            server.stop()
    except PostgreSQLError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
