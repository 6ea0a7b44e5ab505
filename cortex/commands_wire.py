"""Turning a request on ``cortex.cmd.<tenant>.<kind>`` into commands, and results into a reply.

The wire format is JSON. A request to ``<kind>`` holds one command object
(its ``kind`` may be left out); a request to ``batch`` holds an array of
tagged commands, each judged on its own. A reply holds, per command, either
a receipt ``{"seq", "hash", "id"}`` or ``{"error": {"code", "message"}}``
(``rate_limited`` adds ``retry_after``, in seconds); a batch reply is an
array of them in request order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from events.commands import COMMAND_TYPES, AnyCommand, Command
from events.limits import MAX_ATOMIC, MAX_BATCH
from events.messages import explain
from events.rules import Refusal, check_shape, check_tenant

BATCH_KIND: Final = "batch"
#: Like a batch, but all of it is appended or none (an edit: a successor and a deprecation).
ATOMIC_KIND: Final = "atomic"
_raw_list: Final = msgspec.json.Decoder(list[msgspec.Raw])
_whole_batch: Final = msgspec.json.Decoder(list[AnyCommand])
_decoders: Final = {kind: msgspec.json.Decoder(cls) for kind, cls in COMMAND_TYPES.items()}
_tagged: Final = msgspec.json.Decoder(msgspec.Raw)
_encoder: Final = msgspec.json.Encoder()

Result = dict[str, Any]
#: msgspec decodes nested JSON recursively: a deep enough payload exhausts the stack.
_TOO_DEEP: Final = Refusal("malformed", "the JSON nests too deeply to be a command")


@dataclass(frozen=True, slots=True)
class Request:
    tenant: str
    batch: bool
    atomic: bool
    #: One entry per command: the decoded command, or why it was refused at the door.
    items: list[Command | Refusal]


class _Speaker(msgspec.Struct):
    """Only whom a command speaks for: decoding this skips everything else in it."""

    agent_id: str = ""


_speaker: Final = msgspec.json.Decoder(_Speaker)
_speakers: Final = msgspec.json.Decoder(list[_Speaker])


def speakers(subject: str, data: bytes) -> dict[str, int] | None:
    """Agent id → commands, read cheaply from a request (a tenth of ``parse``'s cost), so
    that a flood over its rate is refused before it is decoded; None if it cannot tell."""
    kind = subject.rpartition(".")[2]
    try:
        if kind in (BATCH_KIND, ATOMIC_KIND):
            costs: dict[str, int] = {}
            for one in _speakers.decode(data):
                costs[one.agent_id] = costs.get(one.agent_id, 0) + 1
            return costs
        return {_speaker.decode(data).agent_id: 1}
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


def error(code: str, message: str, *, retry_after: float | None = None) -> Result:
    if retry_after is not None:
        return {"error": {"code": code, "message": message, "retry_after": retry_after}}
    return {"error": {"code": code, "message": message}}


def receipt(seq: int, event_hash: bytes, event_id: str) -> Result:
    return {"seq": seq, "hash": event_hash.hex(), "id": event_id}


def _decode_one(kind: str, data: bytes | msgspec.Raw) -> Command | Refusal:
    decoder = _decoders.get(kind)
    if decoder is None:
        return Refusal(
            "unknown_kind", f"unknown command kind {kind!r}; known: {sorted(COMMAND_TYPES)}"
        )
    try:
        command: Command = decoder.decode(data)
    except msgspec.ValidationError as e:
        text = str(e)
        if " - at `" not in text and text.startswith("Expected `object`"):
            return Refusal("malformed", "a command is a JSON object")
        said = explain(e, bytes(data))
        if kind == "cast_vote" and text.endswith("`$.value`"):
            return Refusal("invalid_vote", f"a vote is +1, -1 or 0: {said}")
        return Refusal("invalid_field", said)
    except msgspec.DecodeError as e:
        return Refusal("malformed", f"not valid JSON: {e}")
    except RecursionError:
        return _TOO_DEEP
    return check_shape(command) or command


def _kind_of_raw(raw: msgspec.Raw) -> str | Refusal:
    try:
        obj = msgspec.json.decode(raw, type=dict[str, Any])
    except (msgspec.ValidationError, msgspec.DecodeError):
        return Refusal("malformed", "each batch entry must be a JSON object")
    except RecursionError:
        return _TOO_DEEP
    kind = obj.get("kind")
    if not isinstance(kind, str):
        return Refusal("invalid_field", "each batch entry needs a string field `kind`")
    return kind


def parse(subject: str, data: bytes) -> Request | Result:
    """Decode a command request, or return the error reply that refuses all of it."""
    parts = subject.split(".")
    if len(parts) != 4:
        return error("malformed", f"commands go to cortex.cmd.<tenant>.<kind>, not {subject}")
    tenant, kind = parts[2], parts[3]
    refused = check_tenant(tenant)
    if refused is not None:
        return error(refused.code, refused.message)
    if kind not in (BATCH_KIND, ATOMIC_KIND):
        return Request(tenant, False, False, [_decode_one(kind, data)])
    return _parse_many(tenant, kind, data)


def _parse_many(tenant: str, kind: str, data: bytes) -> Request | Result:
    """A batch or atomic request: a JSON array of tagged commands, each judged on its own."""
    atomic = kind == ATOMIC_KIND
    most = MAX_ATOMIC if atomic else MAX_BATCH
    if data.strip() == b"[]":
        return error("invalid_field", f"a {kind} request holds at least one command")
    try:
        # The common case, every entry valid, in one pass; otherwise entry by entry.
        commands: list[AnyCommand] = _whole_batch.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        pass  # entry by entry, below, says which one and why
    else:
        if len(commands) <= most:
            return Request(tenant, True, atomic, [check_shape(c) or c for c in commands])
    try:
        raws = _raw_list.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        return error("malformed", f"a batch is a JSON array of commands: {e}")
    except RecursionError:
        return error(_TOO_DEEP.code, _TOO_DEEP.message)
    if len(raws) > most:
        return error(
            "too_large", f"a {kind} request holds at most {most} commands, not {len(raws)}"
        )
    items: list[Command | Refusal] = []
    for raw in raws:
        kind_or_refusal = _kind_of_raw(raw)
        if isinstance(kind_or_refusal, Refusal):
            items.append(kind_or_refusal)
        else:
            items.append(_decode_one(kind_or_refusal, raw))
    return Request(tenant, True, atomic, items)


def encode_reply(results: list[Result] | Result) -> bytes:
    return _encoder.encode(results)
