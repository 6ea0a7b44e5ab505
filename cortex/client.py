"""The agent-side client: store facts, vote, register agents.

Every call returns a Receipt (the event's seq, hash and id) or raises a
CommandRejected that says what was wrong (``RateLimited``, with
``retry_after`` seconds, when the agent or its tenant is over its fair share:
nothing was appended, and the same call may be made again after that). Under load the client batches:
calls made while a request is in flight are sent together, up to 100
commands or 10 ms of waiting, and each still gets its own receipt or its
own error. A lone call is sent at once. Ids are chosen here (UUIDv7), so a
request that timed out is retried with the same ids and cannot append twice.

The client rides through a fail-over: it knows every server of the cluster
(the seeds it was given, and those the cluster announces) and reconnects on
its own, and it sends a command again, the very same bytes, until a reply
says what became of it or ``deadline`` seconds have passed: after no reply
within ``attempt_timeout`` (a writer killed, a reply lost), no writer
subscribed yet (a standby taking over), or a reply that says "not now"
(``unavailable``, ``busy``). The writer appends each id once and answers a
repeat with the first receipt, so a command is neither lost nor doubled.
Refusals (bad input, forbidden, conflicts, rate limits) are final at once.

An agent registered with a public key must sign what it sends. Give the
client the agent's private key (``keys=`` at connect, ``sign_as``, or
``key=`` on one call) and its facts, deprecations and votes are signed
before they join a batch; a retry resends the very same signed command.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

import msgspec
import structlog
import uuid_utils.compat
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cortex.commands_wire import ATOMIC_KIND, BATCH_KIND
from cortex.errors import (
    CODES,
    CortexError,
    Forbidden,
    Forked,
    InvalidCommand,
    QueryFailed,
    Unavailable,
    rejection,
)
from cortex.nats import CHECKPOINT_SUBJECT, DEFAULT_URL, Bus, Credentials, Role, command_subject
from cortex.nats.auth import from_env as credentials_from_env
from cortex.receipts import COVERING_KIND, ORIGIN_KIND
from cortex.trust import Head, TrustStore, check_consistency
from events import signing
from events.codec import encode
from events.commands import CastVote, Command, DeprecateFact, RegisterAgent, StoreFact
from events.limits import MAX_ATOMIC, MAX_REQUEST_BYTES
from events.note import NoteError, parse_verifier_key, raw_public, verify
from events.operations import QUERIES, GetStats, Query, Stats, op_name
from events.rules import check_shape, check_tenant, utc
from projections.tasks import stop_task

log = structlog.get_logger(__name__)

DEFAULT_TENANT: Final = "default"
#: How long a command is tried, in all, before Unavailable (a fail-over takes seconds).
DEFAULT_DEADLINE: Final = 30.0
#: How long one try waits for its reply before it sends again (same ids).
DEFAULT_ATTEMPT_TIMEOUT: Final = 2.0
#: Pause between tries: from 50 ms, doubling, at most 1 s.
_FIRST_DELAY: Final = 0.05
_MAX_DELAY: Final = 1.0
#: The shortest try worth making as the deadline nears.
_MIN_ATTEMPT: Final = 0.1
_reply_decoder: Final = msgspec.json.Decoder(list[dict[str, Any]] | dict[str, Any])


class _ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str


class _Reply(msgspec.Struct, frozen=True):
    result: msgspec.Raw = msgspec.Raw(b"null")
    error: _ErrorBody | None = None


_typed_reply: Final = msgspec.json.Decoder(_Reply)
_encode: Final = msgspec.json.Encoder().encode


def _as_of(seq: int | None) -> dict[str, int]:
    return {} if seq is None else {"as_of_seq": seq}


def _store_command(
    agent_id: str,
    content: str,
    *,
    type: str,
    tags: Iterable[str],
    confidence: float,
    source: str,
    meta: Mapping[str, Any] | None,
    valid_from: dt.datetime | None,
    valid_until: dt.datetime | None,
    fact_id: uuid.UUID | None = None,
    id: uuid.UUID | None = None,
) -> StoreFact:
    """The StoreFact that ``store_fact`` and ``edit_fact`` send, world times in UTC."""
    return StoreFact(
        id=id or new_id(),
        fact_id=fact_id or new_id(),
        agent_id=agent_id,
        content=content,
        type=type,
        tags=tuple(tags),
        confidence=confidence,
        source=source,
        meta=dict(meta or {}),
        valid_from=utc(valid_from, what="valid_from"),
        valid_until=utc(valid_until, what="valid_until"),
    )


def new_id() -> uuid.UUID:
    """A UUIDv7: unique, and sortable by creation time."""
    return uuid_utils.compat.uuid7()


def _public_hex(key: str | Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """An agent's public key as the 64 hex digits the ledger records."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return raw_public(key).hex() if isinstance(key, Ed25519PublicKey) else key


def _tenant_of(creds: Credentials | None, tenant: str | None) -> str:
    """The tenant a client acts in: an agent's own (another is refused), else the one
    asked for, else the default."""
    if creds is None or creds.role is not Role.AGENT:
        return tenant or DEFAULT_TENANT
    if tenant is not None and tenant != creds.tenant:
        raise Forbidden(
            f"these credentials are for tenant {creds.tenant!r}, not {tenant!r}: an agent acts "
            "in its own tenant only (the server refuses any other)",
            code="wrong_tenant",
        )
    return creds.tenant


def _rejection(err: dict[str, Any]) -> CortexError:
    """The typed error for an error reply, with its fields (``retry_after``)."""
    retry_after = err.get("retry_after")
    return rejection(
        str(err.get("code")),
        str(err.get("message")),
        retry_after=float(retry_after) if isinstance(retry_after, int | float) else None,
    )


def _passing_code(code: object) -> bool:
    """Whether an error reply's code means "not now, ask again" (an ``Unavailable``
    code: no writer, no stream leader, a full queue), not a refusal."""
    cls, _meaning = CODES.get(str(code), (CortexError, ""))
    return issubclass(cls, Unavailable)


def _passing_error(results: list[dict[str, Any]]) -> CortexError | None:
    """The first "not now" error among a reply's results; None if every one is final."""
    for result in results:
        err = result.get("error")
        if isinstance(err, dict) and _passing_code(err.get("code")):
            return _rejection(err)
    return None


def _results(raw: bytes, count: int) -> list[dict[str, Any]]:
    """One result per command sent; a single error reply refuses them all."""
    reply = _reply_decoder.decode(raw)
    results = reply if isinstance(reply, list) else [reply] * count
    if len(results) != count:
        raise CortexError(f"writer answered {len(results)} results for {count} commands")
    return results


@dataclass(frozen=True, slots=True)
class CheckpointRef:
    """A signed checkpoint: the tree of its ``tree_size`` first events, its root and note."""

    seq: int
    tree_size: int
    root: str
    #: The C2SP signed note (the writer's signature over origin, size and root).
    note: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that an event is in the ledger: where, with which hash, under which id,
    and (once issued, see ``Client.wait_checkpoint``) the signed checkpoint covering it."""

    seq: int
    hash: str
    id: uuid.UUID
    #: For store_fact: the id of the stored fact, to vote on or deprecate it.
    fact_id: uuid.UUID | None = None
    #: The first signed checkpoint known to cover ``seq``; None until asked for.
    checkpoint: CheckpointRef | None = None


@dataclass(slots=True)
class _Call:
    command: Command
    body: bytes
    future: asyncio.Future[dict[str, Any]]


class Client:
    """An async CORTEX client bound to one tenant; see the module doc."""

    def __init__(
        self,
        bus: Bus,
        *,
        tenant: str = DEFAULT_TENANT,
        max_batch: int = 100,
        linger: float = 0.010,
        timeout: float = 10.0,
        deadline: float = DEFAULT_DEADLINE,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
        max_in_flight: int = 32,
        keys: Mapping[str, Ed25519PrivateKey] | None = None,
        owns_bus: bool = False,
        remember: Path | str | bool = False,
    ) -> None:
        refused = check_tenant(tenant)
        if refused is not None:  # a tenant no subject can carry: say so before any request
            raise refused.error()
        self.bus = bus
        self.tenant = tenant
        #: agent id → the private key this client signs that agent's commands with.
        self._keys: dict[str, Ed25519PrivateKey] = dict(keys or {})
        #: Remembered heads (``cortex.trust``): True for the user's store, or a file.
        self._trust: TrustStore | None = (
            None
            if remember is False
            else TrustStore.load(None if remember is True else Path(remember))
        )
        self.max_batch = max_batch
        self.linger = linger
        #: Seconds a query (and a wait for a checkpoint) waits for its reply.
        self.timeout = timeout
        #: Seconds a command is tried in all; and one try waits for its reply.
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self._owns_bus = owns_bus
        self._queue: asyncio.Queue[_Call] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight = 0
        #: Requests sent so far (a batch counts once): how well calls are batched.
        self.requests_sent = 0
        self._sender: asyncio.Task[None] | None = None
        self._carry: _Call | None = None
        self._returned = asyncio.Event()
        self._sends: set[asyncio.Task[None]] = set()
        #: The ledger's origin (its first event's hash), signed into agents' commands;
        #: learnt from the writer before the first signature (b"": an empty ledger).
        self._origin: bytes | None = None

    @classmethod
    async def connect(
        cls,
        url: str | Sequence[str] | None = None,
        *,
        tenant: str | None = None,
        creds: Credentials | Path | str | None = None,
        **options: Any,
    ) -> Self:
        """Connect to ``url`` (default: the one in the credentials, else the local
        default) as ``creds`` (a credentials file or object; default ``CORTEX_CREDS``).
        ``url`` may name several servers of a cluster: a list, or comma-separated.

        Agent credentials name their tenant, and the server lets them send to that
        tenant only: the client takes the tenant from them and refuses another.
        """
        if creds is not None and not isinstance(creds, Credentials):
            creds = Credentials.load(creds)
        elif creds is None:
            creds = credentials_from_env()
        tenant = _tenant_of(creds, tenant)
        refused = check_tenant(tenant)
        if refused is not None:
            raise refused.error()
        url = url or (creds.url if creds is not None and creds.url else DEFAULT_URL)
        bus = await Bus.connect(url, name=f"cortex-client-{tenant}", creds=creds)
        try:
            return cls(bus, tenant=tenant, owns_bus=True, **options)
        except BaseException:
            await bus.close()
            raise

    async def close(self) -> None:
        """Wait for calls already made, then close the connection if this client opened it."""
        while not self._queue.empty() or self._sends or self._carry is not None:
            if self._sends:
                await asyncio.gather(*self._sends, return_exceptions=True)
            else:
                await asyncio.sleep(0)
        if self._sender is not None:
            await stop_task(self._sender)
            self._sender = None
        if self._owns_bus:
            await self.bus.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- commands ---------------------------------------------------------

    def sign_as(self, agent_id: str, key: Ed25519PrivateKey) -> None:
        """Sign ``agent_id``'s commands from now on with ``key``."""
        self._keys[agent_id] = key

    async def register_agent(
        self,
        agent_id: str,
        *,
        public_key: str | Ed25519PublicKey | Ed25519PrivateKey | None = None,
        id: uuid.UUID | None = None,
    ) -> Receipt:
        """Register an agent, with the public key its commands will be signed by.

        ``public_key`` is 64 hex digits or a key object. Given the private key,
        the client registers its public half and signs as the agent from then on.
        """
        if isinstance(public_key, Ed25519PrivateKey):
            self.sign_as(agent_id, public_key)
        return await self.submit(
            RegisterAgent(
                id=id or new_id(),
                agent_id=agent_id,
                public_key=None if public_key is None else _public_hex(public_key),
            )
        )

    async def store_fact(
        self,
        agent_id: str,
        content: str,
        *,
        type: str = "knowledge",
        tags: Iterable[str] = (),
        confidence: float = 1.0,
        source: str = "",
        meta: Mapping[str, Any] | None = None,
        valid_from: dt.datetime | None = None,
        valid_until: dt.datetime | None = None,
        fact_id: uuid.UUID | None = None,
        id: uuid.UUID | None = None,
        key: Ed25519PrivateKey | None = None,
        wait_checkpoint: bool = False,
    ) -> Receipt:
        command = _store_command(
            agent_id,
            content,
            type=type,
            tags=tags,
            confidence=confidence,
            source=source,
            meta=meta,
            valid_from=valid_from,
            valid_until=valid_until,
            fact_id=fact_id,
            id=id,
        )
        r = await self.submit(command, key=key, wait_checkpoint=wait_checkpoint)
        return dataclasses.replace(r, fact_id=command.fact_id)

    async def deprecate_fact(
        self,
        agent_id: str,
        fact_id: uuid.UUID,
        *,
        reason: str = "",
        successor_id: uuid.UUID | None = None,
        id: uuid.UUID | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> Receipt:
        return await self.submit(
            DeprecateFact(
                id=id or new_id(),
                fact_id=fact_id,
                agent_id=agent_id,
                reason=reason,
                successor_id=successor_id,
            ),
            key=key,
        )

    async def vote(
        self,
        agent_id: str,
        fact_id: uuid.UUID,
        value: int,
        *,
        reason: str = "",
        id: uuid.UUID | None = None,
        key: Ed25519PrivateKey | None = None,
        wait_checkpoint: bool = False,
    ) -> Receipt:
        return await self.submit(
            CastVote(
                id=id or new_id(), fact_id=fact_id, agent_id=agent_id, value=value, reason=reason
            ),
            key=key,
            wait_checkpoint=wait_checkpoint,
        )

    def sign(self, command: Command, key: Ed25519PrivateKey | None = None) -> Command:
        """``command`` signed for this tenant by ``key``, or by the key known for its agent.

        Kinds that carry no signature, and commands with no key to sign them,
        come back as they are; so does a command already signed, unless
        ``key`` is given.
        """
        if not signing.is_signable(command):
            return command
        if key is None:
            if getattr(command, "signature", None) is not None:
                return command
            key = self._keys.get(getattr(command, "agent_id", ""))
            if key is None:
                return command
        return signing.sign_command(command, self.tenant, key, origin=self._origin or b"")

    async def origin(self) -> bytes:
        """The ledger's origin: the hash of its first event (b"" while it is empty).

        Signatures name it, so one made for this ledger does not hold on another.
        """
        if not self._origin:
            raw = await self._ask_writer(command_subject(self.tenant, ORIGIN_KIND), b"")
            reply = msgspec.json.decode(raw)
            if not isinstance(reply, dict) or "origin" not in reply:
                raise CortexError("unexpected reply from the writer", code="internal")
            self._origin = bytes.fromhex(str(reply["origin"]))
        return self._origin

    async def _learn_origin(self, command: Command, key: Ed25519PrivateKey | None) -> None:
        """Before signing ``command``: know the origin (one small ask, once per client)."""
        if self._origin or not signing.is_signable(command):
            return
        if key is None and (
            getattr(command, "signature", None) is not None
            or getattr(command, "agent_id", "") not in self._keys
        ):
            return
        await self.origin()

    async def submit(
        self,
        command: Command,
        *,
        key: Ed25519PrivateKey | None = None,
        wait_checkpoint: bool = False,
    ) -> Receipt:
        """Send any command (batched with others under load) and wait for its receipt.

        The command is signed first if a key is given or known for its agent
        (see ``sign``). With ``wait_checkpoint`` the receipt also carries the
        signed checkpoint covering the event (within about the writer's
        checkpoint interval; see ``wait_checkpoint``).
        """
        refused = check_shape(command)
        if refused is not None:  # what the writer would answer, without the round trip
            raise refused.error()
        await self._learn_origin(command, key)
        command = self.sign(command, key)
        body = encode(command)
        if len(body) > MAX_REQUEST_BYTES:
            raise InvalidCommand(
                f"command is {len(body)} bytes encoded; "
                f"requests are limited to {MAX_REQUEST_BYTES}",
                code="too_large",
            )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Call(command, body, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="cortex-client-sender")
        result = await future
        err = result.get("error")
        if err is not None:
            raise _rejection(err)
        done = Receipt(int(result["seq"]), str(result["hash"]), uuid.UUID(str(result["id"])))
        return await self.wait_checkpoint(done) if wait_checkpoint else done

    async def submit_atomic(
        self, commands: Sequence[Command], *, key: Ed25519PrivateKey | None = None
    ) -> list[Receipt]:
        """Append ``commands`` all together or none of them, in this order.

        On a refusal the error of the first refused command is raised (the
        others were ``aborted``); nothing was appended. A lost reply is
        retried with the same ids, so it never appends twice.
        """
        if not 1 <= len(commands) <= MAX_ATOMIC:
            raise InvalidCommand(
                f"an atomic request holds 1 to {MAX_ATOMIC} commands", code="too_large"
            )
        signed: list[Command] = []
        for command in commands:
            refused = check_shape(command)
            if refused is not None:
                raise refused.error()
            await self._learn_origin(command, key)
            signed.append(self.sign(command, key))
        payload = b"[" + b",".join(encode(c) for c in signed) + b"]"
        if len(payload) > MAX_REQUEST_BYTES:
            raise InvalidCommand(
                f"the request is {len(payload)} bytes; the limit is {MAX_REQUEST_BYTES}",
                code="too_large",
            )
        subject = command_subject(self.tenant, ATOMIC_KIND)
        count = len(signed)
        raw = await self._ask_writer(
            subject, payload, again=lambda raw: _passing_error(_results(raw, count))
        )
        results = _results(raw, count)
        errors = [r["error"] for r in results if "error" in r]
        real = [e for e in errors if e.get("code") != "aborted"] or errors
        if real:
            raise _rejection(real[0])
        return [Receipt(int(r["seq"]), str(r["hash"]), uuid.UUID(str(r["id"]))) for r in results]

    async def edit_fact(
        self,
        agent_id: str,
        fact_id: uuid.UUID,
        content: str,
        *,
        reason: str = "",
        type: str = "knowledge",
        tags: Iterable[str] = (),
        confidence: float = 1.0,
        source: str = "",
        meta: Mapping[str, Any] | None = None,
        valid_from: dt.datetime | None = None,
        valid_until: dt.datetime | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> Receipt:
        """Replace a fact: its successor is stored and it is deprecated, in one atomic
        append (never one without the other). The receipt is the successor's, with its
        ``fact_id``."""
        successor = _store_command(
            agent_id,
            content,
            type=type,
            tags=tags,
            confidence=confidence,
            source=source,
            meta=meta,
            valid_from=valid_from,
            valid_until=valid_until,
        )
        deprecation = DeprecateFact(
            id=new_id(),
            fact_id=fact_id,
            agent_id=agent_id,
            reason=reason,
            successor_id=successor.fact_id,
        )
        stored, _deprecated = await self.submit_atomic([successor, deprecation], key=key)
        return Receipt(stored.seq, stored.hash, stored.id, fact_id=successor.fact_id)

    # -- queries ----------------------------------------------------------

    async def query(
        self, op: str, *, min_seq: int | None = None, wait: float = 5.0, **params: Any
    ) -> Any:
        """Ask any node's read model. With ``min_seq`` (a receipt's seq) the node
        first waits, at most ``wait`` seconds, until it has applied that event."""
        if min_seq is not None:
            params["min_seq"] = min_seq
            params["timeout"] = wait
        payload = msgspec.json.encode(params)
        raw = await self.bus.request(
            f"cortex.query.{self.tenant}.{op}", payload, timeout=self.timeout + wait
        )
        reply = _reply_decoder.decode(raw)
        if not isinstance(reply, dict):
            raise QueryFailed(f"unexpected reply to {op}", code="internal")
        err = reply.get("error")
        if err is not None:
            raise QueryFailed(str(err.get("message")), code=str(err.get("code")))
        return reply.get("result")

    async def ask(self, query: Query) -> Any:
        """Any query as its typed Struct, answered as its typed result (``events.operations``)."""
        op = op_name(query)
        wait = query.timeout if query.min_seq is not None else 0.0
        raw = await self.bus.request(
            f"cortex.query.{self.tenant}.{op}", _encode(query), timeout=self.timeout + wait
        )
        try:
            reply = _typed_reply.decode(raw)
            if reply.error is not None:
                raise QueryFailed(reply.error.message, code=reply.error.code)
            return msgspec.json.decode(reply.result, type=QUERIES[op].result)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise QueryFailed(f"unexpected reply to {op}: {e}", code="internal") from e

    async def stats(self, *, min_seq: int | None = None) -> Stats:
        """How much this tenant holds (facts, deprecated, agents, current votes)."""
        result: Stats = await self.ask(GetStats(min_seq=min_seq))
        return result

    async def get_fact(
        self,
        fact_id: uuid.UUID | str,
        *,
        min_seq: int | None = None,
        as_of_seq: int | None = None,
    ) -> dict[str, Any] | None:
        """The fact's current state and consensus, or None if this tenant has no such fact."""
        result: dict[str, Any] | None = await self.query(
            "get_fact", fact_id=str(fact_id), min_seq=min_seq, **_as_of(as_of_seq)
        )
        return result

    async def consensus(
        self,
        fact_id: uuid.UUID | str,
        *,
        min_seq: int | None = None,
        as_of_seq: int | None = None,
    ) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.query(
            "consensus", fact_id=str(fact_id), min_seq=min_seq, **_as_of(as_of_seq)
        )
        return result

    async def history(
        self,
        fact_id: uuid.UUID | str,
        *,
        min_seq: int | None = None,
        as_of_seq: int | None = None,
    ) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.query(
            "history", fact_id=str(fact_id), min_seq=min_seq, **_as_of(as_of_seq)
        )
        return result

    async def search(
        self,
        text: str,
        *,
        limit: int = 20,
        min_seq: int | None = None,
        as_of_seq: int | None = None,
    ) -> list[dict[str, Any]]:
        """Facts matching any of the words (stemmed), best first; ``as_of_seq``: as the
        ledger stood at that seq."""
        result: list[dict[str, Any]] = await self.query(
            "search", text=text, limit=limit, min_seq=min_seq, **_as_of(as_of_seq)
        )
        return result

    async def facts(self, *, min_seq: int | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Current facts, or filtered: include_deprecated, valid_at (ISO), as_of_seq, agent_id,
        type, limit, cursor."""
        result: list[dict[str, Any]] = await self.query("facts", min_seq=min_seq, **filters)
        return result

    async def facts_page(self, *, min_seq: int | None = None, **filters: Any) -> dict[str, Any]:
        """One page of ``facts`` (same filters): ``{"items": [...], "next_cursor": …}``; pass
        ``cursor=next_cursor`` for the next page, until it is None."""
        result: dict[str, Any] = await self.query("facts_page", min_seq=min_seq, **filters)
        return result

    async def search_page(
        self,
        text: str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        min_seq: int | None = None,
        as_of_seq: int | None = None,
    ) -> dict[str, Any]:
        """One page of ``search``: ``{"items": [...], "next_cursor": …}``; pass
        ``cursor=next_cursor`` for the next page, until it is None."""
        params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
        result: dict[str, Any] = await self.query(
            "search_page", text=text, limit=limit, min_seq=min_seq, **params, **_as_of(as_of_seq)
        )
        return result

    async def agents(self, *, min_seq: int | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.query("agents", min_seq=min_seq)
        return result

    # -- checkpoints and proofs -------------------------------------------

    async def checkpoint(
        self, tree_size: int | None = None, *, min_seq: int | None = None
    ) -> dict[str, Any]:
        """The latest signed checkpoint (or the one of ``tree_size``) and the writer's
        verifier key, as a node holds them."""
        params: dict[str, Any] = {} if tree_size is None else {"tree_size": tree_size}
        result: dict[str, Any] = await self.query("checkpoint", min_seq=min_seq, **params)
        if self._trust is not None and tree_size is None:
            await self._extends_remembered(result)
        return result

    async def _extends_remembered(self, checkpoint: dict[str, Any]) -> None:
        """With ``remember``: refuse (``RolledBack``/``Forked``) a latest checkpoint that
        does not extend the one remembered for its origin, proven offline by a
        consistency proof the node gives; else remember it."""
        assert self._trust is not None
        note, key = str(checkpoint["note"]), str(checkpoint.get("verifier", ""))
        try:
            name, public_key = parse_verifier_key(key)
            latest = Head.from_note(note)
            verify(note, name, public_key)
        except NoteError as e:
            raise CortexError(f"the node's checkpoint does not verify: {e}", code="internal") from e
        remembered = self._trust.get(latest.origin)
        if remembered is not None and latest.tree_size > remembered.tree_size:
            doc = await self.consistency_proof(remembered.tree_size, latest.tree_size)
            path = [bytes.fromhex(p) for p in doc.get("path", [])]
            new = Head.from_note(str(doc.get("new", "")))
            if (new.tree_size, new.root) != (latest.tree_size, latest.root):
                raise Forked(f"{latest.origin}: the consistency proof is for another checkpoint")
            check_consistency(remembered, new, path)
        elif remembered is not None:
            check_consistency(remembered, latest, [])
        if remembered is None or latest.tree_size > remembered.tree_size:
            self._trust.remember(latest)
            self._trust.save()

    async def make_checkpoint(self) -> dict[str, Any]:
        """Have the writer sign a checkpoint now; it as a node serves it."""
        raw = await self.bus.request(CHECKPOINT_SUBJECT, b"", timeout=self.timeout)
        reply = msgspec.json.decode(raw)
        if not isinstance(reply, dict):
            raise CortexError("unexpected reply from the writer", code="internal")
        if "error" in reply:
            raise _rejection(reply["error"])
        return await self.checkpoint(reply["tree_size"], min_seq=reply["seq"])

    async def wait_checkpoint(self, receipt: Receipt, timeout: float | None = None) -> Receipt:
        """``receipt`` with the first signed checkpoint covering its event.

        The writer answers once it has signed one (it does within its checkpoint
        interval while events arrive); a node then serves its signed note.
        """
        wait = self.timeout if timeout is None else timeout
        payload = msgspec.json.encode({"covering": receipt.seq})
        subject = command_subject(self.tenant, COVERING_KIND)  # agents may send here only
        raw = await self.bus.request(subject, payload, timeout=wait)
        reply = msgspec.json.decode(raw)
        if not isinstance(reply, dict):
            raise CortexError("unexpected reply from the writer", code="internal")
        if "error" in reply:
            raise _rejection(reply["error"])
        cp = await self.checkpoint(int(reply["tree_size"]), min_seq=int(reply["seq"]))
        ref = CheckpointRef(int(cp["seq"]), int(cp["tree_size"]), str(cp["root"]), str(cp["note"]))
        return dataclasses.replace(receipt, checkpoint=ref)

    async def proof(
        self,
        event: int | str | uuid.UUID,
        *,
        tree_size: int | None = None,
        min_seq: int | None = None,
    ) -> dict[str, Any]:
        """An inclusion proof of one of this tenant's events (by seq or id) against the
        latest checkpoint (or that of ``tree_size``); check it with
        ``cortex.check_proof``, offline."""
        params: dict[str, Any] = {"event": event if isinstance(event, int) else str(event)}
        if tree_size is not None:
            params["tree_size"] = tree_size
        result: dict[str, Any] = await self.query("proof", min_seq=min_seq, **params)
        return result

    async def consistency_proof(
        self, old_size: int, new_size: int, *, min_seq: int | None = None
    ) -> dict[str, Any]:
        """Proof that the checkpoint of ``new_size`` events extends that of ``old_size``."""
        result: dict[str, Any] = await self.query(
            "consistency", min_seq=min_seq, old_size=old_size, new_size=new_size
        )
        return result

    # -- riding through fail-over -----------------------------------------

    async def _ask_writer(
        self,
        subject: str,
        payload: bytes,
        *,
        again: Callable[[bytes], CortexError | None] = lambda _raw: None,
    ) -> bytes:
        """Send ``payload`` to the writer until it answers for good; its reply.

        Sent again, the very same bytes (so the same event ids), after no reply
        or no writer (Unavailable) and after a reply that ``again`` finds to
        say "not now"; with backoff, until ``deadline`` seconds have passed
        (then Unavailable, with the last reason). Anything else is raised at once.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.deadline
        delay, tries = _FIRST_DELAY, 0
        while True:
            tries += 1
            wait = max(_MIN_ATTEMPT, min(self.attempt_timeout, give_up - loop.time()))
            try:
                raw = await self.bus.request(subject, payload, timeout=wait)
            except Unavailable as e:
                error: CortexError = e
            else:
                found = again(raw)
                if found is None:
                    return raw
                error = found
            left = give_up - loop.time()
            if left <= 0:
                raise Unavailable(
                    f"no answer from a writer within {self.deadline:g} s ({tries} tries); "
                    f"the last: {error.message}",
                    code=error.code,
                ) from error
            log.info("command_retry", subject=subject, error=error.code, tries=tries)
            await asyncio.sleep(min(delay, left))
            delay = min(2 * delay, _MAX_DELAY)

    # -- batching ---------------------------------------------------------

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._carry or await self._queue.get()
            self._carry = None
            batch, size = [first], len(first.body)
            deadline = loop.time() + self.linger
            while len(batch) < self.max_batch:
                call = self._queue.get_nowait() if not self._queue.empty() else None
                if call is None:
                    # Idle: send now. Busy: let later calls join until a request
                    # in flight comes back, or the linger runs out.
                    remaining = deadline - loop.time()
                    if self._in_flight == 0 or remaining <= 0:
                        break
                    call = await self._next_call(remaining)
                    if call is None:
                        break
                if size + len(call.body) + 1 > MAX_REQUEST_BYTES:
                    self._carry = call  # opens the next request
                    break
                batch.append(call)
                size += len(call.body) + 1
            await self._slots.acquire()
            self._in_flight += 1
            task = asyncio.create_task(self._send(batch))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _next_call(self, timeout: float) -> _Call | None:
        """The next call, or None once a request in flight finishes or ``timeout`` passes."""
        self._returned.clear()
        getter = asyncio.ensure_future(self._queue.get())
        returned = asyncio.ensure_future(self._returned.wait())
        await asyncio.wait({getter, returned}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        returned.cancel()
        if getter.done():
            return getter.result()
        getter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getter
        return None if not getter.done() or getter.cancelled() else getter.result()

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                subject = command_subject(
                    self.tenant, str(type(batch[0].command).__struct_config__.tag)
                )
                payload = batch[0].body
            else:
                subject = command_subject(self.tenant, BATCH_KIND)
                payload = b"[" + b",".join(c.body for c in batch) + b"]"
            self.requests_sent += 1
            count = len(batch)
            raw = await self._ask_writer(
                subject, payload, again=lambda raw: _passing_error(_results(raw, count))
            )
            for call, result in zip(batch, _results(raw, len(batch)), strict=True):
                if not call.future.done():
                    call.future.set_result(result)
        except Exception as e:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(e)
        finally:
            self._in_flight -= 1
            self._slots.release()
            self._returned.set()
