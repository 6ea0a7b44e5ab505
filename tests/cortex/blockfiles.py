"""nats-server's block files, read and rewritten as an attacker who holds the data folder.

The layout (nats-server 2.15, ``server/filestore.go``): a stream's messages are in
``<store>/jetstream/<account>/streams/<stream>/msgs/<index>.blk``, one record after
another::

    length u32 (high bit: has headers) | seq u64 | ts i64 | subject length u16 |
    subject | [headers length u32 | headers] | message | checksum (8)

all little-endian; ``length`` counts the whole record, checksum included. The
checksum is HighwayHash-64 of seq‖ts‖subject‖headers‖message keyed with
SHA-256("<stream>-<index>"). A record whose checksum fails cuts the block there, so
a rewrite recomputes every checksum; ``msgs/index.db`` (the cached stream state)
is removed so that the server rebuilds the stream from the blocks.

``rechain`` is the strongest attacker's move: edit events anywhere, re-link every
following event's chain headers (the chain is keyless) and re-sign every checkpoint
from the first change on with the writer key.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import highwayhash
import msgspec

from cortex.core.keys import WriterKey
from cortex.core.sequencer import origin_of
from cortex.nats import HDR_HASH, HDR_PREV, STREAM, ledger_subject
from events.chain import GENESIS, link
from events.codec import decode_event, encode
from events.merkle import MerkleAccumulator, leaf_hash
from events.model import SYSTEM_TENANT, CheckpointSigned
from events.note import Checkpoint, sign

_HEADERS_BIT = 1 << 31
_FIXED = struct.Struct("<IQqH")  # length, seq, ts, subject length: 22 bytes
_CHECKSUM = 8
_NATS_HEADER = b"NATS/1.0\r\n"
_CHECKPOINTS = ledger_subject(SYSTEM_TENANT, "checkpoint_signed")


@dataclass(frozen=True)
class Record:
    """One message as a block file stores it."""

    seq: int
    ts: int
    subject: str
    headers: dict[str, str]
    body: bytes


def _encode_headers(headers: dict[str, str]) -> bytes:
    if not headers:
        return b""
    lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    return _NATS_HEADER + lines + b"\r\n"


def _decode_headers(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    assert raw.startswith(_NATS_HEADER) and raw.endswith(b"\r\n\r\n"), raw[:40]
    lines = raw[len(_NATS_HEADER) : -4].decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert _encode_headers(headers) == raw, "the headers would not be rewritten byte for byte"
    return headers


def _checksum(key: bytes, seq: int, ts: int, subject: bytes, headers: bytes, body: bytes) -> bytes:
    data = struct.pack("<Qq", seq, ts) + subject + headers + body
    digest: bytes = highwayhash.highwayhash_64(key, data)
    return digest


def _key(block: Path) -> bytes:
    return hashlib.sha256(f"{STREAM}-{int(block.stem)}".encode()).digest()


def blocks(data_dir: Path) -> list[Path]:
    """The ledger stream's block files, in order."""
    (msgs,) = (data_dir / "store" / "jetstream").glob(f"*/streams/{STREAM}/msgs")
    return sorted(msgs.glob("*.blk"), key=lambda p: int(p.stem))


def read_block(block: Path) -> list[Record]:
    """Every record of ``block``; each checksum is checked (so the rewrite is known right)."""
    data, key, records, at = block.read_bytes(), _key(block), [], 0
    while at < len(data):
        length, seq, ts, slen = _FIXED.unpack_from(data, at)
        has_headers, length = bool(length & _HEADERS_BIT), length & ~_HEADERS_BIT
        end = at + length
        pos = at + _FIXED.size
        subject = data[pos : pos + slen]
        pos += slen
        headers = b""
        if has_headers:
            (hlen,) = struct.unpack_from("<I", data, pos)
            headers = data[pos + 4 : pos + 4 + hlen]
            pos += 4 + hlen
        body = data[pos : end - _CHECKSUM]
        assert data[end - _CHECKSUM : end] == _checksum(key, seq, ts, subject, headers, body), (
            f"{block}: record of seq {seq} fails its checksum"
        )
        assert seq >> 62 == 0, f"{block}: seq {seq:#x} is a tombstone or erased record"
        records.append(Record(seq, ts, subject.decode(), _decode_headers(headers), body))
        at = end
    return records


def write_block(block: Path, records: list[Record]) -> None:
    """Write ``records`` as the whole of ``block``, each with its checksum."""
    key, out = _key(block), bytearray()
    for r in records:
        subject, headers = r.subject.encode(), _encode_headers(r.headers)
        rest = (struct.pack("<I", len(headers)) + headers if headers else b"") + r.body
        length = _FIXED.size + len(subject) + len(rest) + _CHECKSUM
        out += _FIXED.pack(length | (_HEADERS_BIT if headers else 0), r.seq, r.ts, len(subject))
        out += subject + rest + _checksum(key, r.seq, r.ts, subject, headers, r.body)
    block.write_bytes(bytes(out))


def forget_index(data_dir: Path) -> None:
    """Remove the cached stream state: the server rebuilds the stream from the blocks."""
    (blocks(data_dir)[0].parent / "index.db").unlink(missing_ok=True)


#: An attacker's edit: given a record, the records to store in its place (the same
#: one, a changed one, or none to cut it; seqs are renumbered by ``rechain``).
Edit = Callable[[Record], list[Record]]


def rechain(data_dir: Path, key: WriterKey, edit: Edit) -> list[Record]:
    """Apply ``edit`` to every record (server stopped), renumber, re-link the chain
    headers from the genesis on and re-sign every checkpoint with ``key``, then write
    each block back with its checksums and forget the index. Returns the new ledger.

    A checkpoint covers every event before it, as the writer signs them.
    """
    per_block = [(block, read_block(block)) for block in blocks(data_dir)]
    head, first, tree, seq = GENESIS, b"", MerkleAccumulator(), 0
    written: list[tuple[Path, list[Record]]] = []
    for block, records in per_block:
        out: list[Record] = []
        for original in records:
            for record in edit(original):
                seq += 1
                body = record.body
                if record.subject == _CHECKPOINTS:  # decode nothing else: forgeries may not
                    event = decode_event(body)
                    assert isinstance(event, CheckpointSigned)
                    size = seq - 1
                    summary = Checkpoint(origin_of(first), size, tree.root(), head)
                    body = encode(
                        msgspec.structs.replace(
                            event,
                            tree_size=size,
                            root=summary.root.hex(),
                            head=head.hex(),
                            public_key=key.public_hex,
                            note=sign(summary.body(), key.name, key.private),
                        )
                    )
                new = link(head, body)
                headers = {**record.headers, HDR_PREV: head.hex(), HDR_HASH: new.hex()}
                out.append(replace(record, seq=seq, headers=headers, body=body))
                head, first = new, first or new
                tree.append(leaf_hash(new))
        written.append((block, out))
    for block, out in written:
        write_block(block, out)
    forget_index(data_dir)
    return [r for _, out in written for r in out]
