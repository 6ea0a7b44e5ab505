"""A realistic synthetic ledger for the read and replay benchmarks, generated deterministically.

The same seed and size always give the same events, byte for byte, so two
runs (and two machines) measure the same work. The shape follows how agents
use CORTEX: about 1,000 agents registered first, spread over a few tenants
of unequal size; then facts (content of 100-300 characters drawn from a
Zipf-distributed vocabulary, a few tags, sometimes a source, meta or
validity window), votes on existing facts of the same tenant (mostly on
recent ones, mostly agreeing with a hidden truth, sometimes a re-vote or a
0 withdrawal) and a few deprecations, some naming a successor.

Every event is built exactly as the writer builds it: a command, turned
into an event by ``events.commands.to_event``, encoded by
``events.codec.encode`` and linked with ``events.chain.link``. Every event
would pass the writer's checks (registered agents, facts of the same
tenant, no double deprecation), so the ledger can be appended to JetStream
and served by ``cortex up`` as it is.

The bodies go to a file (each one behind a 4-byte little-endian length)
that is read back through ``mmap``: records come "from memory" without the
generating process holding a million ``bytes`` objects, and a child process
can stream the same file.
"""

from __future__ import annotations

import datetime as dt
import mmap
import random
import struct
import time
import uuid
from array import array
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from cortex.nats import Outgoing, ledger_subject
from events.chain import GENESIS, HASH_SIZE, link
from events.codec import encode
from events.commands import CastVote, Command, DeprecateFact, RegisterAgent, StoreFact, to_event
from events.model import kind_of
from projections.projector import Record

SEED: Final = 20_251_001
_LEN: Final = struct.Struct("<I")
#: Ledger time of seq 0; events are one millisecond apart.
TS_BASE: Final = 1_760_000_000_000_000_000
TS_STEP: Final = 1_000_000
KINDS: Final = ("agent_registered", "fact_stored", "fact_deprecated", "vote_cast")
_KIND_INDEX: Final = {kind: n for n, kind in enumerate(KINDS)}

_SYLLABLES: Final = (
    "b c d f g h j k l m n p r s t v w z br cr dr fl gr kl pl pr sk sl st tr sh ch th"
)
_ONSETS: Final = tuple(_SYLLABLES.split())
_VOWELS: Final = ("a", "e", "i", "o", "u", "ai", "ea", "io", "ou")
_CODAS: Final = ("", "", "", "n", "r", "s", "t", "l", "m", "x", "nd", "st")
_TAG_WORDS: Final = (
    "physics chemistry biology billing infra network storage security auth api ui "
    "database cache queue deploy release incident postmortem customer sales legal hr "
    "finance ml model eval prompt agent tool latency cost quality docs policy roadmap "
    "design research experiment"
)
_TAGS: Final = tuple(_TAG_WORDS.split())
_TYPES: Final = ("knowledge", "decision", "observation", "preference", "procedure")
_TYPE_WEIGHTS: Final = (60, 15, 15, 5, 5)
_REASONS: Final = ("", "", "", "duplicate", "outdated", "wrong source", "superseded")
#: A deprecation by anyone but the author must say why (events.rules), so these never empty.
_DEPRECATION_REASONS: Final = ("duplicate", "outdated", "wrong source", "superseded")


@dataclass(frozen=True, slots=True)
class Mix:
    """What the ledger is made of; the shares are of all events after the registrations."""

    agents: int = 1000
    tenants: tuple[tuple[str, float], ...] = (
        ("acme", 0.45),
        ("globex", 0.30),
        ("initech", 0.15),
        ("umbrella", 0.10),
    )
    facts: float = 0.20
    deprecations: float = 0.015
    #: Of the votes: an agent that voted on the fact before votes again.
    revotes: float = 0.06
    #: Of the re-votes: a 0 that withdraws the earlier vote.
    withdrawals: float = 0.35
    #: Of the first votes: on one of the tenant's most recent facts.
    recent: float = 0.70
    recent_window: int = 2000
    #: How often a voter agrees with the fact's hidden truth.
    agreement: float = 0.80
    vocabulary: int = 8000
    seed: int = SEED


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        syllables = rng.choice((1, 2, 2, 2, 3, 3, 4))
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
        word += rng.choice(_CODAS)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _zipf_cumulative(size: int, s: float = 1.05, q: float = 2.7) -> list[float]:
    """Cumulative Zipf-Mandelbrot weights: rank r is drawn with weight 1 / (r + q)^s."""
    total = 0.0
    cumulative: list[float] = []
    for rank in range(1, size + 1):
        total += 1.0 / (rank + q) ** s
        cumulative.append(total)
    return cumulative


@dataclass(slots=True)
class _Tenant:
    name: str
    index: int
    agents: list[str] = field(default_factory=list)
    facts: list[uuid.UUID] = field(default_factory=list)
    truth: bytearray = field(default_factory=bytearray)  # 1: the fact is "true"
    deprecated: set[int] = field(default_factory=set)
    voted: list[tuple[int, str]] = field(default_factory=list)  # a sample of (fact, agent)


@dataclass(slots=True)
class Ledger:
    """A generated ledger on disk: bodies in ``path``, chain data and indexes in memory."""

    path: Path
    count: int
    tenant_names: tuple[str, ...]
    #: Where each record (length prefix, then body) starts; ``offsets[count]`` is the end.
    offsets: array[int]
    hashes: bytearray  # HASH_SIZE bytes per event
    ids: bytearray  # 16 bytes per event: the event id
    kinds: bytearray  # index into KINDS per event
    tenants: bytearray  # index into tenant_names per event
    #: (tenant, fact id) of every stored fact, in ledger order.
    facts: list[tuple[str, uuid.UUID]]
    vocabulary: list[str]
    generate_seconds: float
    _file: Any = None
    _map: mmap.mmap | None = None

    # -- access -------------------------------------------------------------

    def open(self) -> Self:
        if self._map is None:
            self._file = self.path.open("rb")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def head(self) -> bytes:
        return self.hash(self.count) if self.count else GENESIS

    @property
    def body_bytes(self) -> int:
        return self.offsets[self.count] - 4 * self.count

    def body(self, seq: int) -> bytes:
        """The stored bytes of event ``seq`` (1-based, as in the stream)."""
        assert self._map is not None, "open the ledger first"
        return self._map[self.offsets[seq - 1] + 4 : self.offsets[seq]]

    def hash(self, seq: int) -> bytes:
        return bytes(self.hashes[(seq - 1) * HASH_SIZE : seq * HASH_SIZE])

    def kind_counts(self) -> dict[str, int]:
        return {kind: self.kinds.count(n) for n, kind in enumerate(KINDS)}

    def records(self, start: int = 1, stop: int | None = None) -> Iterator[Record]:
        """(seq, body) for ``start`` .. ``stop`` (default: the last event)."""
        assert self._map is not None, "open the ledger first"
        data, offsets = self._map, self.offsets
        end = self.count if stop is None else stop
        for seq in range(start, end + 1):
            yield seq, data[offsets[seq - 1] + 4 : offsets[seq]]

    async def stream(self) -> AsyncIterator[Record]:
        """The records as the projector consumes them (nothing here waits)."""
        for record in self.records():
            yield record

    def outgoing(self, start: int, stop: int) -> list[Outgoing]:
        """Events ``start`` .. ``stop`` ready for ``Bus.append``, as the writer stages them."""
        batch: list[Outgoing] = []
        for seq in range(start, stop + 1):
            n = seq - 1
            subject = ledger_subject(self.tenant_names[self.tenants[n]], KINDS[self.kinds[n]])
            event_id = str(uuid.UUID(bytes=bytes(self.ids[n * 16 : seq * 16])))
            prev = self.hash(seq - 1) if seq > 1 else GENESIS
            batch.append(Outgoing(subject, self.body(seq), event_id, prev, self.hash(seq)))
        return batch


def iter_bodies(path: Path) -> Iterator[bytes]:
    """Stream the bodies of a ledger file (for a child process without the indexes)."""
    with path.open("rb", buffering=1 << 20) as f:
        while header := f.read(4):
            (size,) = _LEN.unpack(header)
            yield f.read(size)


class _Generator:
    def __init__(self, mix: Mix) -> None:
        self.mix = mix
        self.rng = random.Random(mix.seed)
        self.vocabulary = _vocabulary(self.rng, mix.vocabulary)
        self.cumulative = _zipf_cumulative(len(self.vocabulary))
        self.tenants = [_Tenant(name, n) for n, (name, _) in enumerate(mix.tenants)]
        self.tenant_cumulative: list[float] = []
        total = 0.0
        for _, share in mix.tenants:
            total += share
            self.tenant_cumulative.append(total)

    def uuid7(self, seq: int) -> uuid.UUID:
        """A UUIDv7 (time prefix from ledger time, random tail from the seeded generator)."""
        millis = (TS_BASE + seq * TS_STEP) // 1_000_000
        value = (millis << 80) | (0x7 << 76) | (self.rng.getrandbits(12) << 64)
        value |= (0b10 << 62) | self.rng.getrandbits(62)
        return uuid.UUID(int=value)

    def tenant(self) -> _Tenant:
        return self.rng.choices(self.tenants, cum_weights=self.tenant_cumulative)[0]

    def content(self) -> str:
        target = self.rng.randint(100, 300)
        words = self.rng.choices(self.vocabulary, cum_weights=self.cumulative, k=target // 4)
        text = words[0].capitalize()
        for word in words[1:]:
            if len(text) + 1 + len(word) > target:
                break
            text += " " + word
        while len(text) < 100:  # short words all along: pad with more
            text += " " + self.rng.choices(self.vocabulary, cum_weights=self.cumulative)[0]
        return text[:299] + "."

    def fact(self, seq: int, tenant: _Tenant) -> Command:
        rng = self.rng
        fact_id = self.uuid7(seq)
        tenant.facts.append(fact_id)
        tenant.truth.append(1 if rng.random() < 0.7 else 0)
        tags = tuple(dict.fromkeys(rng.choices(_TAGS, k=rng.choice((0, 1, 1, 2, 2, 3)))))
        fields: dict[str, Any] = {}
        if rng.random() < 0.4:
            fields["source"] = f"https://docs.example.com/{rng.choice(self.vocabulary)}"
        if rng.random() < 0.3:
            fields["meta"] = {"run": rng.randrange(10_000), "model": "agent-small"}
        if rng.random() < 0.1:
            start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                minutes=rng.randrange(500_000)
            )
            fields["valid_from"] = start
            if rng.random() < 0.5:
                fields["valid_until"] = start + dt.timedelta(days=rng.randrange(1, 400))
        return StoreFact(
            id=self.uuid7(seq),
            fact_id=fact_id,
            agent_id=rng.choice(tenant.agents),
            content=self.content(),
            type=rng.choices(_TYPES, weights=_TYPE_WEIGHTS)[0],
            tags=tags,
            confidence=round(rng.uniform(0.5, 1.0), 2),
            **fields,
        )

    def vote(self, seq: int, tenant: _Tenant) -> Command:
        rng, mix = self.rng, self.mix
        if tenant.voted and rng.random() < mix.revotes:
            index, agent = rng.choice(tenant.voted)
            value = 0 if rng.random() < mix.withdrawals else rng.choice((-1, 1))
        else:
            facts = len(tenant.facts)
            if rng.random() < mix.recent:
                index = facts - 1 - rng.randrange(min(facts, mix.recent_window))
            else:
                index = rng.randrange(facts)
            agent = rng.choice(tenant.agents)
            truth = 1 if tenant.truth[index] else -1
            value = truth if rng.random() < mix.agreement else -truth
            if len(tenant.voted) < 8192:
                tenant.voted.append((index, agent))
            else:
                tenant.voted[rng.randrange(8192)] = (index, agent)
        return CastVote(
            id=self.uuid7(seq), fact_id=tenant.facts[index], agent_id=agent, value=value
        )

    def deprecation(self, seq: int, tenant: _Tenant) -> Command | None:
        rng = self.rng
        for _ in range(3):
            index = rng.randrange(len(tenant.facts))
            if index not in tenant.deprecated:
                break
        else:
            return None
        tenant.deprecated.add(index)
        newest = len(tenant.facts) - 1
        successor = tenant.facts[newest] if newest != index and rng.random() < 0.5 else None
        return DeprecateFact(
            id=self.uuid7(seq),
            fact_id=tenant.facts[index],
            agent_id=rng.choice(tenant.agents),
            reason=rng.choice(_DEPRECATION_REASONS),
            successor_id=successor,
        )

    def command(self, seq: int, registrations: list[tuple[_Tenant, str]]) -> tuple[Command, int]:
        if seq <= len(registrations):
            tenant, agent = registrations[seq - 1]
            return RegisterAgent(id=self.uuid7(seq), agent_id=agent), tenant.index
        tenant = self.tenant()
        if not tenant.facts:
            return self.fact(seq, tenant), tenant.index
        roll = self.rng.random()
        command: Command | None = None
        if roll < self.mix.facts:
            command = self.fact(seq, tenant)
        elif roll < self.mix.facts + self.mix.deprecations:
            command = self.deprecation(seq, tenant)
        if command is None:
            command = self.vote(seq, tenant)
        return command, tenant.index

    def registrations(self, events: int) -> list[tuple[_Tenant, str]]:
        count = min(self.mix.agents, max(2 * len(self.tenants), events // 20))
        regs: list[tuple[_Tenant, str]] = []
        for n in range(count):
            # The first agents go round the tenants so each has at least two.
            if n < 2 * len(self.tenants):
                tenant = self.tenants[n % len(self.tenants)]
            else:
                tenant = self.tenant()
            agent = f"agent-{n:04d}"
            tenant.agents.append(agent)
            regs.append((tenant, agent))
        return regs


def generate(path: Path, events: int, mix: Mix | None = None) -> Ledger:
    """Write ``events`` events to ``path`` and return the ledger (closed: ``open()`` it)."""
    if events < 1:
        raise ValueError("a ledger needs at least one event")
    started = time.perf_counter()
    gen = _Generator(mix or Mix())
    registrations = gen.registrations(events)
    offsets: array[int] = array("Q")
    hashes, ids, kinds, tenant_of = bytearray(), bytearray(), bytearray(), bytearray()
    facts: list[tuple[str, uuid.UUID]] = []
    head = GENESIS
    position = 0
    with path.open("wb", buffering=1 << 20) as f:
        for seq in range(1, events + 1):
            command, tenant_index = gen.command(seq, registrations)
            tenant = gen.tenants[tenant_index].name
            event = to_event(command, tenant=tenant, ts=TS_BASE + seq * TS_STEP)
            body = encode(event)
            head = link(head, body)
            f.write(_LEN.pack(len(body)))
            f.write(body)
            offsets.append(position)
            position += 4 + len(body)
            hashes += head
            ids += command.id.bytes
            kinds.append(_KIND_INDEX[kind_of(event)])
            tenant_of.append(tenant_index)
            if isinstance(command, StoreFact):
                facts.append((tenant, command.fact_id))
    offsets.append(position)
    return Ledger(
        path=path,
        count=events,
        tenant_names=tuple(t.name for t in gen.tenants),
        offsets=offsets,
        hashes=hashes,
        ids=ids,
        kinds=kinds,
        tenants=tenant_of,
        facts=facts,
        vocabulary=gen.vocabulary,
        generate_seconds=time.perf_counter() - started,
    )
