"""The floors point one way, and nats-py enters through one door.

ops → cortex → projections → events: a lower floor never imports a higher
one. Only ``cortex/nats/`` imports nats-py, so that a switch to its successor
touches one package; the few exceptions below say why they need the raw
client. The writer's core stays pure: no NATS, no asyncio.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cortex", "events", "projections", "ops", "tests")

#: Files outside cortex/nats/ that may import nats-py, and why.
RAW_NATS_ALLOWED = {
    "tests/conftest.py": "the forge fixture publishes around the writer, as anyone could",
    "tests/cortex/test_tamper.py": "plays an attacker with a raw connection",
    "tests/cortex/test_permissions.py": "attacks the server's permissions with raw connections",
    "ops/bench/write.py": "the plain nats-py baseline the writer is measured against",
    "ops/bench/cluster.py": "plain R3 JetStream publishing and failover, measured beside CORTEX's",
}

#: What each floor must not import (a top-level package, or a dotted prefix).
FORBIDDEN = {
    "events": ("projections", "cortex", "ops", "nats"),
    "projections": ("cortex", "ops", "nats"),
    "cortex/core": ("cortex.nats", "nats", "asyncio", "ops"),
    "cortex": ("ops",),
}


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def _imports(tree: ast.Module) -> Iterator[str]:
    """Every absolute module name ``tree`` imports (relative imports are not used)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


SOURCES = dict(_sources())


def test_only_cortex_nats_imports_nats_py() -> None:
    """nats-py is imported in cortex/nats/ and the few listed places, nowhere else."""
    offenders = sorted(
        f"{path}: {name}"
        for path, tree in SOURCES.items()
        if not path.startswith("cortex/nats/") and path not in RAW_NATS_ALLOWED
        for name in _imports(tree)
        if _within(name, "nats")
    )
    assert offenders == []


def test_the_raw_nats_exceptions_still_need_it() -> None:
    """Each allowed exception really imports nats-py; a stale entry is removed."""
    stale = [
        path
        for path in RAW_NATS_ALLOWED
        if not any(_within(name, "nats") for name in _imports(SOURCES[path]))
    ]
    assert stale == []


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_a_floor_imports_nothing_above_it(floor: str) -> None:
    """events/ imports no projections or cortex, projections/ no cortex, the core no NATS."""
    offenders = sorted(
        f"{path}: {name}"
        for path, tree in SOURCES.items()
        if path.startswith(floor + "/")
        for name in _imports(tree)
        if any(_within(name, banned) for banned in FORBIDDEN[floor])
    )
    assert offenders == []


def test_import_nats_inside_cortex_nats_is_nats_py() -> None:
    """The package is called cortex.nats, yet ``import nats`` in it finds nats-py."""
    store = importlib.import_module("cortex.nats.store")
    nats_py = store.nats
    assert nats_py.__name__ == "nats"
    assert not Path(nats_py.__file__).resolve().is_relative_to(ROOT / "cortex")
    assert nats_py.js.errors.NotFoundError.__module__ == "nats.js.errors"


def test_cortex_nats_exports_what_it_lists() -> None:
    """Every name in cortex.nats.__all__ exists, and the list is sorted."""
    package = importlib.import_module("cortex.nats")
    assert all(hasattr(package, name) for name in package.__all__)
    assert package.__all__ == sorted(package.__all__)


def test_no_wait_for_outside_the_tests() -> None:
    """``asyncio.wait_for`` drops a cancellation that meets its result on Python 3.11
    (see projections/tasks.py); a node's stop hung on it. ``asyncio.timeout`` does not."""
    offenders = sorted(
        f"{path}:{node.lineno}"
        for path, tree in SOURCES.items()
        if not path.startswith("tests/")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "wait_for"
        and isinstance(node.value, ast.Name)
        and node.value.id == "asyncio"
    )
    assert offenders == []
