"""What the fault-injection suites share: a seeded generator whose seed is printed, and counting what arrived."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Set it to replay a run: the seed each test used is printed (pytest shows it with -s, or when the test fails).
SEED_VARIABLE = "EVENTBUS_FAULT_SEED"


def seeded(name: str) -> random.Random:
    """A generator for one test, seeded from EVENTBUS_FAULT_SEED or at random; the seed is printed."""
    seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))
    print(f"{name}: {SEED_VARIABLE}={seed}")
    return random.Random(seed)


def jsonl(path: Path) -> list[Any]:
    """The JSON lines of a file (none if it does not exist yet); a line being written is left for later."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            break
    return entries


class Tally:
    """What arrived, against what was sent: missing, duplicated."""

    def __init__(self, sent: Iterable[Any], arrived: Iterable[Any]) -> None:
        self.sent = set(sent)
        self.arrived = Counter(arrived)

    @property
    def missing(self) -> set[Any]:
        return self.sent - set(self.arrived)

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.arrived.values())

    def report(self, what: str) -> str:
        return (f"{what}: sent {len(self.sent)}, arrived {len(self.arrived)} distinct, "
                f"missing {len(self.missing)}, duplicates {self.duplicates}")
