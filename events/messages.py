"""What a user sent and what is allowed, instead of msgspec's own words.

msgspec explains a failed decode in its terms (``Expected `str` matching
regex '^[A-Za-z0-9_.@:-]+$' - at `$.agent_id` ``). ``explain`` turns such
an error into the field's name, the value that was sent (read back from the
request's bytes) and the rule in plain words, e.g. ``agent_id 'bad name!'
is not allowed: use only letters, digits and _ . @ : -``. Every front door
that decodes a request (the writer's command decoder, the query decoder)
calls it, so a user never sees a regex or a JSON path. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from events import limits

#: Patterns the types use, in words.
PATTERNS: Final[dict[str, str]] = {
    limits.AGENT_PATTERN: "use only letters, digits and _ . @ : -",
    limits.TENANT_PATTERN: "use only letters, digits, _ and -",
    r"^[0-9a-f]{64}$": "it must be 64 lowercase hex digits",
    r"^[0-9a-f]{128}$": "it must be 128 lowercase hex digits",
    r"^[^\s+]+$": "it must not contain spaces or +",
    r"^[fs][0-9]{1,19}$": "pass the next_cursor a page gave, as it was",
}
_TYPES: Final = {
    "str": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "object": "a JSON object",
    "array": "a list",
    "null": "null",
    "uuid": "a UUID",
    "datetime": "an ISO 8601 date-time",
}
_AT: Final = re.compile(r"^(?P<what>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_STEP: Final = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_SHOWN: Final = 60


def _words(type_name: str) -> str:
    return _TYPES.get(type_name, type_name)


def _rule(what: str) -> str:
    """msgspec's description of the expectation, as what is allowed."""
    if m := re.fullmatch(r"Expected `(\w+)` matching regex '(.*)'", what):
        return PATTERNS.get(m.group(2), f"it must match {m.group(2)}")
    if m := re.fullmatch(r"Expected `(\w+)` of length (<=|>=) (\d+)", what):
        unit = "items" if m.group(1) in ("array", "object") else "characters"
        if m.group(2) == ">=":
            return "it must not be empty" if m.group(3) == "1" else f"at least {m.group(3)} {unit}"
        return f"at most {m.group(3)} {unit}"
    if m := re.fullmatch(r"Expected `(\w+)` (<=|>=|<|>) (\S+)", what):
        bound = {"<=": "at most", ">=": "at least", "<": "below", ">": "above"}[m.group(2)]
        return f"it must be {_words(m.group(1))} {bound} {m.group(3)}"
    if m := re.fullmatch(r"Expected `(.+?)`, got `(\w+)`", what):
        wanted = " or ".join(_words(t.strip("` ")) for t in m.group(1).split("|"))
        return f"it must be {wanted}, not {_words(m.group(2))}"
    if what.startswith("Expected `datetime` with a timezone"):
        return "it needs a time zone, e.g. 2025-01-01T00:00:00Z"
    if what.startswith("Invalid UUID"):
        return "it must be a UUID, e.g. 0190a000-0000-7000-8000-000000000001"
    if what.startswith(("Invalid RFC3339", "Invalid datetime")):
        return "it must be an ISO 8601 date-time, e.g. 2025-01-01T00:00:00Z"
    if what.startswith("Invalid enum value"):
        return f"{what[len('Invalid enum value ') :]} is not one of the allowed values"
    return what


def _value_at(data: bytes | None, path: str) -> tuple[bool, Any]:
    """The value the request held at msgspec's JSON path, if it can be read back."""
    if not data:
        return False, None
    try:
        value: Any = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return False, None
    for name, index in _STEP.findall(path[1:]):
        try:
            value = value[name] if name else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, value


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def explain(error: msgspec.ValidationError | str, data: bytes | None = None) -> str:
    """``error`` (from decoding ``data``) as: the field, the value sent, what is allowed."""
    text = str(error)
    if m := re.fullmatch(r"Object missing required field `(\w+)`(?: - at `(\$[^`]*)`)?", text):
        where = _field(m.group(2)) if m.group(2) else ""
        return f"{where + ': ' if where else ''}field {m.group(1)!r} is required but was not sent"
    if m := re.fullmatch(r"Object contains unknown field `(\w+)`(?: - at `(\$[^`]*)`)?", text):
        where = _field(m.group(2)) if m.group(2) else ""
        return f"{where + ': ' if where else ''}there is no field {m.group(1)!r} (a typo?)"
    match = _AT.match(text)
    assert match is not None  # the pattern matches any text
    rule = _rule(match.group("what"))
    path = match.group("path")
    if not path or path == "$":
        return f"the request is not allowed: {rule}"
    found, value = _value_at(data, path)
    sent = f" {_show(value)}" if found else ""
    return f"{_field(path)}{sent} is not allowed: {rule}"


def _field(path: str) -> str:
    """``$.tags[1]`` as ``tags[1]``; ``$[2].agent_id`` (a batch entry) as
    ``command 3: agent_id``."""
    rest = path[1:]
    if m := re.match(r"\[(\d+)\]\.?", rest):
        inner = rest[m.end() :]
        return f"command {int(m.group(1)) + 1}" + (f": {inner}" if inner else "")
    return rest.lstrip(".") or "the request"
