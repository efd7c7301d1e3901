"""Development tools: what run_dev.py starts besides the real system.

- ``smtp_sink``: an SMTP server that keeps every email the system sends;
- ``push_gateway``: a stand-in for the push notification bouncer that keeps every push;
- the pages that show them, /devtools/emails and /devtools/pushes, are served by
  the Tornado server beside the other pages (``eventbus.web.devtools``);
- ``embedded``: the whole system in one process on the in-process broker.

Everything they keep is under ``<var>/dev/``, one JSON object per line.
"""

from pathlib import Path
from typing import Any

from eventbus import codec


def dev_dir(var_dir: Path | str) -> Path:
    path = Path(var_dir) / "dev"
    path.mkdir(parents=True, exist_ok=True)
    return path


def append(path: Path, record: dict[str, object]) -> None:
    """Append one record as a JSON line (one write: lines of concurrent writers never interleave)."""
    with open(path, "ab") as f:
        f.write(codec.encode(record) + b"\n")


def read(path: Path, last: int = 200) -> list[dict[str, Any]]:
    """The last ``last`` records of a JSON lines file, newest first."""
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()[-last:]
    return [codec.decode(line) for line in reversed(lines) if line.strip()]
