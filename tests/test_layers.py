"""The import graph keeps the picture of DESIGN.md and eventbus/__init__.py: imports point down.

Three layers: the core (settings, codec, errors, the stores) imports nothing
above it; the components (queue, processors, tornado_events) import the core
and, of each other, only what the picture allows (tornado_events and
processors use queue, queue uses neither, tornado_events never imports
processors); the top (app, cli, web, devtools, metrics, django) may import
anything. A module's imports are read from its source, functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.workers import ROOT

PACKAGE = ROOT / "eventbus"
COMPONENTS = ("queue", "processors", "tornado_events")
TOP = ("app", "cli", "web", "devtools", "metrics", "django", "__main__")
#: What each component may import besides the core and itself.
COMPONENT_USES = {"queue": set(), "processors": {"queue", "tornado_events"}, "tornado_events": {"queue"}}


def part_of(module: str) -> str:
    """The layer part a module ``eventbus.X...`` belongs to: a component's name, "top" or "core"."""
    first = module.split(".")[1] if "." in module else ""
    if first in COMPONENTS:
        return first
    return "top" if first in TOP else "core"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The eventbus modules ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("eventbus.")}


def forbidden(importer: str, imported: str) -> bool:
    source, target = part_of(importer), part_of(imported)
    if source == "top" or target in ("core", source):
        return False
    if source == "core":
        return True
    return target == "top" or target not in COMPONENT_USES[source]


def test_every_import_points_down() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported in sorted(imports_of(path)):
            if forbidden(importer, imported):
                violations.append(f"{importer} ({part_of(importer)}) imports {imported} ({part_of(imported)})")
    assert not violations, "imports that point up or sideways:\n" + "\n".join(violations)


def test_the_rules_catch_what_the_picture_forbids() -> None:
    assert forbidden("eventbus.queue.client", "eventbus.processors.worker")
    assert forbidden("eventbus.tornado_events.server", "eventbus.processors.registry")
    assert forbidden("eventbus.processors.worker", "eventbus.app")
    assert forbidden("eventbus.settings", "eventbus.queue")
    assert not forbidden("eventbus.processors.message_send", "eventbus.tornado_events")
    assert not forbidden("eventbus.app", "eventbus.processors.registry")
    assert not forbidden("eventbus.queue.client", "eventbus.settings")
