"""The list of error codes is the truth: every code the code can produce is documented,
and every documented code is produced somewhere.

The code base is read as syntax trees: a code is produced where it is the
first argument of ``Refusal``/``error``/``error_for``, a ``code=`` keyword,
a ``"code": …`` entry of a reply, or the ``code`` of an error class that is
raised without one.
"""

from __future__ import annotations

import ast
from pathlib import Path

from events.errors import CODES, CortexError, InternalError, error_for

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cortex", "events", "projections")
#: Bases that are never raised without a code of their own.
ABSTRACT = {"error", "rejected", "conflict"}
_FACTORIES = {"Refusal", "error", "error_for", "_error", "refuse"}


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _literal(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _codes_in(node: ast.AST) -> list[str | None]:
    """The literal codes one syntax node produces."""
    if isinstance(node, ast.Call):
        first = [_literal(node.args[0])] if _name(node.func) in _FACTORIES and node.args else []
        return first + [_literal(kw.value) for kw in node.keywords if kw.arg == "code"]
    if isinstance(node, ast.Dict):
        return [
            _literal(value)
            for key, value in zip(node.keys, node.values, strict=True)
            if key is not None and _literal(key) == "code"
        ]
    if isinstance(node, ast.ClassDef):
        return [
            _literal(stmt.value)
            for stmt in node.body
            if isinstance(stmt, ast.Assign)
            and [_name(t) for t in stmt.targets] == ["code"]
            and _literal(stmt.value) not in ABSTRACT
        ]
    return []


def produced_codes() -> dict[str, list[str]]:
    """Every literal code in the packages, with where it appears."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                for code in _codes_in(node):
                    if code is not None:
                        found.setdefault(code, []).append(f"{rel}:{getattr(node, 'lineno', 0)}")
    return found


def test_every_produced_code_is_documented() -> None:
    undocumented = {c: w for c, w in produced_codes().items() if c not in CODES}
    assert not undocumented, f"add these to events.errors.CODES: {undocumented}"


def test_every_documented_code_is_produced_somewhere() -> None:
    never = set(CODES) - set(produced_codes())
    assert not never, f"documented but never produced (remove them): {sorted(never)}"


def test_each_code_raises_its_documented_class() -> None:
    for code, (cls, meaning) in CODES.items():
        assert meaning, code
        e = error_for(code, "because")
        assert isinstance(e, CortexError)
        assert e.code == code and str(e) == "because"
        assert isinstance(e, cls) or (cls.__base__ is not None and isinstance(e, cls.__base__))


def test_an_internal_error_names_a_trace_the_log_can_be_searched_for() -> None:
    first, second = InternalError(KeyError("x")), InternalError(KeyError("x"))
    assert first.code == "internal"
    assert first.trace in str(first) and "KeyError" in str(first)
    assert first.trace != second.trace
