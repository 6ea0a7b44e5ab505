"""The write side of the ``cortex`` command line: run the ledger (up, demo), register
agents, store and deprecate facts, vote, and make agent keys (keygen)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.markup import escape

from cortex import served
from cortex.audit import audit_ledger
from cortex.cli import tenant
from cortex.cli.audit import print_audit
from cortex.cli.connect import open_client
from cortex.cli.output import EXIT_FAILED, EXIT_OK, err, out, print_events, print_json, summary
from cortex.cli.parse import batch_size, parse_time, parse_uuid, positive
from cortex.cli.witness import COSIGNED
from cortex.client import Client, Receipt
from cortex.core.fairshare import DEFAULT_AGENT_RATE, DEFAULT_TENANT_RATE, Rate
from cortex.core.keys import (
    WRITER_KEY_FILE,
    WriterKey,
    create_key,
    default_key_path,
    load_key,
    public_hex,
    writer_key,
    writer_key_at,
)
from cortex.errors import CortexError
from cortex.nats import Bus, Credentials, Durability, LocalAuth
from cortex.nats.subjects import parse_urls
from cortex.receipts import save_receipt
from cortex.runtime import Runtime
from cortex.writer import DEFAULT_CHECKPOINT_EVERY, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_MAX_BATCH
from events.codec import decode_event
from events.model import kind_of
from events.proof import check_proof


def _receipt_dict(r: Receipt) -> dict[str, Any]:
    """A write's JSON: the fact id first when it made one, then the receipt, whose event
    id is named ``event_id`` so it is never taken for the fact's."""
    d: dict[str, Any] = {} if r.fact_id is None else {"fact_id": str(r.fact_id)}
    d.update(seq=r.seq, hash=r.hash, event_id=str(r.id))
    return d


async def _with_client(
    args: argparse.Namespace, work: Callable[[Client], Awaitable[Receipt]]
) -> int:
    out_file = getattr(args, "receipt_out", None)
    async with await open_client(args) as client:
        receipt = await work(client)
        if out_file:
            # Evidence for later (`cortex verify-receipt`): with the checkpoint covering it.
            receipt = await client.wait_checkpoint(receipt)
            save_receipt(receipt, client.tenant, Path(out_file))
    if args.json:
        print_json(_receipt_dict(receipt))
        return EXIT_OK
    if receipt.fact_id is not None:
        out.print(f"fact {receipt.fact_id}")
    out.print(
        f"receipt: seq {receipt.seq}, hash {receipt.hash[:16]}…, event {receipt.id}",
        style="dim" if receipt.fact_id is not None else None,
    )
    return EXIT_OK


def _read_key(path: str | None) -> Ed25519PrivateKey | None:
    """The private key in ``--key FILE``, if given; any failure to read it is a CortexError."""
    if path is None:
        return None
    try:
        return load_key(Path(path))
    except OSError as e:
        raise CortexError(f"cannot read key file {path}: {e.strerror or e}", code="bad_key") from e


DEFAULT_DATA: Final = ".cortex"
DEFAULT_PORT: Final = 4222


def _server_of(args: argparse.Namespace) -> str | None:
    """The external server ``cortex up`` uses, or None to start the embedded one.

    A typed ``--nats`` names one (and contradicts ``--port``). An exported
    CORTEX_NATS_URL names one too, but gives way to a typed ``--port`` (which only
    the embedded server has); with ``--data`` alone it is ambiguous — the folder
    means something in both modes, and guessing wrong starts an empty ledger — so
    that is an error that says what to type.
    """
    typed, exported = args.nats, os.environ.get("CORTEX_NATS_URL") or None
    if typed:
        if args.port is not None:
            raise CortexError(
                f"--nats {typed} and --port {args.port} contradict each other: --port is for "
                "the embedded nats-server, --nats uses a running one; give one of them",
                code="invalid_field",
            )
        return ",".join(parse_urls(str(typed)))
    if exported is None:
        return None
    if args.port is not None:
        err.print(
            f"CORTEX_NATS_URL ({escape(exported)}) is ignored: --port {args.port} given, "
            "starting the embedded nats-server"
        )
        return None
    if args.data is not None:
        raise CortexError(
            f"CORTEX_NATS_URL is {exported} and --data {args.data} is given: say which server "
            f"to use — `--nats {exported}` for that one, or `--port PORT` (or unset "
            "CORTEX_NATS_URL) to start the embedded one on the folder",
            code="invalid_field",
        )
    return ",".join(parse_urls(exported))


async def up_replicas(runtime: Runtime, args: argparse.Namespace) -> int:
    """How many replicas the writer keeps the stream at: ``--replicas``, else 3 on a
    cluster of three servers or more, else 1.

    A stream that exists with fewer is reported and kept as it is (the writer
    then requires what it has), unless ``--scale-replicas`` asks to scale it up:
    that takes the admin's credentials, and as many servers up as replicas.
    """
    bus = await Bus.connect(
        runtime.url, name=f"{runtime.name}-setup", creds=runtime.credentials("admin")
    )
    try:
        wanted = bus.default_replicas(args.replicas)
        status = await bus.stream_status()
        if status is None or status.config.num_replicas >= wanted:
            return wanted
        have = status.config.num_replicas
        if args.scale_replicas:
            await bus.scale_replicas(wanted)
            out.print(f"stream CORTEX_LEDGER scaled from {have} to {wanted} replicas")
            return wanted
        err.print(
            f"warning: stream CORTEX_LEDGER has {have} replica{'s' * (have > 1)}, fewer than "
            f"the {wanted} asked for ({bus.server_count()} servers): a server's loss can lose "
            "acknowledged events. `cortex up --scale-replicas` (admin credentials) scales it "
            "up; it stays as it is until then"
        )
        return have
    finally:
        await bus.close()


def _up_key(args: argparse.Namespace, data: Path) -> WriterKey:
    """The writer's key: ``--key``, else an old one in the data folder (with a warning),
    else the one in the user's configuration folder (created on first start)."""
    if args.key is not None:
        return writer_key_at(Path(args.key))
    legacy = data / WRITER_KEY_FILE
    if legacy.exists():
        err.print(
            f"warning: the writer key is in the data folder ({escape(str(legacy))}): anyone "
            "with a copy of the folder can re-sign its checkpoints. Move it out and pass "
            "--key PATH (or keep it in the configuration folder, the default)"
        )
        return writer_key(data)
    return writer_key_at(default_key_path(data))


def _rotate_from(args: argparse.Namespace) -> WriterKey | None:
    """``--rotate-from OLD``: the earlier key that signs the new one into the ledger."""
    if args.rotate_from is None:
        return None
    if args.key is None:
        raise CortexError("--rotate-from OLD needs --key NEW: the key it hands over to")
    return writer_key_at(Path(args.rotate_from))


async def cmd_up(args: argparse.Namespace) -> int:
    """Run the server (unless --nats), the writer and/or the node until SIGINT/SIGTERM."""
    nats_url = _server_of(args)
    data = Path(args.data or DEFAULT_DATA)
    port = DEFAULT_PORT if args.port is None else args.port
    creds = Credentials.load(args.creds) if nats_url is not None and args.creds else None
    if args.witness and args.role != "all":
        raise CortexError(
            "--witness needs --role all: the node in this process makes the consistency "
            "proofs the witnesses ask for",
            code="invalid_field",
        )
    async with Runtime(nats_url, creds=creds) as runtime:
        # The folder holds the store, the read model and the writer key: one
        # process at a time, external server or not.
        runtime.lock(data, purpose=f"cortex up --role {args.role}")
        if nats_url is None:
            await runtime.serve(data, port=port, durability=Durability(args.durability))
        if args.role in ("all", "writer"):
            await runtime.add_writer(
                replicas=await up_replicas(runtime, args),
                max_batch=args.max_batch,
                key=_up_key(args, data),
                rotate_from=_rotate_from(args),
                checkpoint_every=args.checkpoint_every,
                checkpoint_interval=args.checkpoint_interval,
                require_signatures=args.require_signatures,
                accept_unbound_signatures=args.accept_unbound_signatures,
                rate_agent=args.rate_agent,
                rate_tenant=args.rate_tenant,
                candidate=args.writer_candidate,
            )
        if args.role in ("all", "node"):
            await runtime.add_node(data / "projection.db")
        if args.witness:
            cosigned = Path(args.cosigned) if args.cosigned else data / COSIGNED
            await runtime.add_cosigner(args.witness, cosigned)
        url, writer = runtime.url, runtime.writer
        # Where `cortex log`, `audit` and `replay` beside us reach this folder's ledger.
        served.announce(data, url)
        where = f"data in {data}" + (
            f", durability {args.durability}" if nats_url is None else ", external server"
        )
        out.print(f"CORTEX is up: serving {url} ({where}; {args.role}). Ctrl-C to stop.")
        if runtime.server is not None:
            out.print(
                f"no anonymous access: commands run here use {runtime.server.admin_creds}; "
                "issue agents theirs with `cortex tenant add TENANT`"
            )
        if writer is not None and writer.key is not None:
            out.print(
                f"checkpoints are signed by {escape(writer.key.verifier)} "
                "(give it to auditors: cortex audit --writer-key …)"
            )
        if args.witness:
            out.print(
                f"each checkpoint goes to {len(args.witness)} witness(es); cosigned notes are "
                f"kept in {escape(str(cosigned))} (keep a copy outside the data folder)"
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Until Ctrl-C, or until a part fails for good (the server died, the
        # ledger cannot be followed): then its error is the one line we exit with.
        try:
            await runtime.wait(stop)
        finally:
            served.withdraw(data)
        out.print("stopping…")
    return EXIT_OK


async def cmd_keygen(args: argparse.Namespace) -> int:
    """Create an agent's key file and show the public key to register."""
    path = Path(args.file)
    try:
        key = create_key(path)
    except OSError as e:
        raise CortexError(
            f"cannot create key file {path}: {e.strerror or e}", code="bad_key"
        ) from e
    if args.json:
        print_json({"file": str(path), "public_key": public_hex(key)})
    else:
        out.print(f"created {escape(str(path))} (private key, readable by you only)")
        out.print(f"public key {public_hex(key)}")
        out.print(f"register an agent with it: cortex agent add AGENT --key {escape(str(path))}")
    return EXIT_OK


async def cmd_agent_add(args: argparse.Namespace) -> int:
    key = _read_key(args.key)
    public_key = args.public_key if key is None else public_hex(key)
    code = await _with_client(
        args, lambda c: c.register_agent(args.agent_id, public_key=public_key)
    )
    if args.creds_out:
        done = await tenant.issue(args, tenant.default_tenant(args), Path(args.creds_out))
        if not args.json:
            out.print(f"its credentials (tenant {escape(done['tenant'])}): {done['file']}")
    return code


def _fact_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--type", default="knowledge")
    p.add_argument("--tag", action="append", help="a tag (repeatable)")
    p.add_argument("--confidence", type=float, default=1.0, help="0..1 (default 1)")
    p.add_argument("--source", default="")
    p.add_argument("--meta", help="a small JSON object")
    p.add_argument("--valid-from", help="ISO 8601 world time the fact starts to hold")
    p.add_argument("--valid-until", help="ISO 8601 world time the fact stops holding")
    p.add_argument("--key", metavar="FILE", help=_SIGN_HELP)


def _fact_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The new fact's fields, as ``fact add`` and ``fact edit`` take them."""
    try:
        meta = json.loads(args.meta) if args.meta else {}
    except json.JSONDecodeError as e:
        raise CortexError(f"--meta is not JSON: {e}", code="invalid_field") from e
    if not isinstance(meta, dict):
        raise CortexError("--meta must be a JSON object", code="invalid_field")
    return {
        "type": args.type,
        "tags": args.tag or (),
        "confidence": args.confidence,
        "source": args.source,
        "meta": meta,
        "valid_from": parse_time(args.valid_from),
        "valid_until": parse_time(args.valid_until),
        "key": _read_key(args.key),
    }


async def cmd_fact_add(args: argparse.Namespace) -> int:
    fields = _fact_fields(args)
    return await _with_client(args, lambda c: c.store_fact(args.agent, args.content, **fields))


async def cmd_fact_edit(args: argparse.Namespace) -> int:
    """Store the successor and deprecate the fact in one atomic append."""
    fact = parse_uuid(args.fact_id, "fact")
    fields = _fact_fields(args)
    return await _with_client(
        args,
        lambda c: c.edit_fact(args.agent, fact, args.content, reason=args.reason, **fields),
    )


async def cmd_fact_deprecate(args: argparse.Namespace) -> int:
    fact = parse_uuid(args.fact_id, "fact")
    successor = parse_uuid(args.successor, "successor") if args.successor else None
    key = _read_key(args.key)
    return await _with_client(
        args,
        lambda c: c.deprecate_fact(
            args.agent, fact, reason=args.reason, successor_id=successor, key=key
        ),
    )


_VOTES: Final = {"+1": 1, "1": 1, "up": 1, "-1": -1, "down": -1, "0": 0, "withdraw": 0}


async def cmd_vote(args: argparse.Namespace) -> int:
    fact = parse_uuid(args.fact_id, "fact")
    value = _VOTES.get(args.value)
    if value is None:
        raise CortexError(
            f"a vote is +1, -1 or 0 (or up, down, withdraw), not {args.value!r}",
            code="invalid_vote",
        )
    key = _read_key(args.key)
    return await _with_client(
        args, lambda c: c.vote(args.agent, fact, value, reason=args.reason, key=key)
    )


async def cmd_demo(args: argparse.Namespace) -> int:
    """Start a throwaway server, run three agents through a short story, prove and audit it."""
    with tempfile.TemporaryDirectory(prefix="cortex-demo-") as tmp:
        data = Path(tmp)
        # The agents' own credentials: they may write and read tenant "demo" only.
        agents = LocalAuth(data).add_agent("demo")
        async with Runtime(name="cortex-demo") as runtime:
            url = await runtime.serve(data, port=-1)
            await runtime.add_writer(key=writer_key(data))
            node = await runtime.add_node(data / "projection.db")
            bus = await runtime.connect("reader")
            if not args.json:
                out.print(f"CORTEX demo: nats-server {url}, ledger in {tmp}")
            async with (
                await Client.connect(url, creds=agents) as client,
                await Client.connect(url, creds=runtime.credentials("admin")) as operator,
            ):
                signed_vote = await _demo_story(client)
                checkpoint = await operator.make_checkpoint()  # an operator's request
                proof = check_proof(
                    await client.proof(signed_vote), verifier=checkpoint["verifier"]
                )
            rows = [
                {"seq": s.seq, "hash": s.hash.hex(), "subject": s.subject, **_demo_row(s.body)}
                async for s in bus.read(1)
            ]
            await node.projector.wait_for(rows[-1]["seq"], timeout=10)
            report = await audit_ledger(bus, dbs=[data / "projection.db"])
    ok = report.ok and proof.ok
    if args.json:
        print_json({"events": rows, "proof": proof.to_dict(), "audit": report.to_dict()})
        return EXIT_OK if ok else EXIT_FAILED
    print_events(rows, title="what happened")
    out.print(
        f"proof: carol's signed vote (seq {signed_vote}) is in the checkpoint of "
        f"{checkpoint['tree_size']} events signed by {checkpoint['verifier'].split('+')[0]}: "
        + ("[green]verified offline[/]" if proof.ok else f"[red]{proof.problems}[/]")
    )
    return print_audit(report, as_json=False) if proof.ok else EXIT_FAILED


def _demo_row(body: bytes) -> dict[str, Any]:
    event = decode_event(body)
    agent, what = summary(event)
    return {"kind": kind_of(event), "tenant": event.tenant, "agent": agent, "what": what}


async def _demo_story(client: Client) -> int:
    """The story; the seq of carol's signed vote."""
    for agent in ("alice", "bob"):
        await client.register_agent(agent)
    # carol signs what she writes: her key is registered, and the client keeps it.
    await client.register_agent("carol", public_key=Ed25519PrivateKey.generate())
    boils = await client.store_fact(
        "alice", "Water boils at 100 °C at sea level.", tags=["physics"], confidence=0.95
    )
    moon = await client.store_fact(
        "bob", "The Moon is made of cheese.", type="claim", confidence=0.2
    )
    capital = await client.store_fact(
        "carol", "Canberra is the capital of Australia.", source="atlas"
    )
    assert boils.fact_id
    assert moon.fact_id
    assert capital.fact_id
    # Votes from different agents go out together: the client batches them.
    votes = await asyncio.gather(
        client.vote("bob", boils.fact_id, 1),
        client.vote("carol", boils.fact_id, 1),
        client.vote("alice", moon.fact_id, -1, reason="spectroscopy says rock"),
        client.vote("carol", moon.fact_id, -1),
        client.vote("alice", capital.fact_id, 1),
    )
    better = await client.store_fact("bob", "The Moon is made of rock.", confidence=0.9)
    await client.deprecate_fact(
        "bob", moon.fact_id, reason="I was wrong", successor_id=better.fact_id
    )
    return votes[1].seq


# -- the parser -------------------------------------------------------------

_SIGN_HELP: Final = "sign with the agent's key file (required once it has a registered key)"


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the write-side commands to the ``cortex`` parser."""
    _register_run(sub)
    _register_writes(sub, common)


def _register_run(sub: Any) -> None:
    """demo and up: they take only the common options that do something there."""
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    p = sub.add_parser(
        "demo", parents=[verbose], help="run a short story on a throwaway server and audit it"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "up", parents=[verbose], help="start the embedded server (or use --nats) and the writer"
    )
    p.add_argument(
        "--nats",
        metavar="URL[,URL…]",
        help="use this NATS server or cluster instead of starting one: one URL, or several "
        "seeds of a cluster, comma-separated (env CORTEX_NATS_URL, which a typed --port "
        "overrides)",
    )
    p.add_argument(
        "--replicas",
        type=positive,
        metavar="N",
        help="copies of the ledger stream the writer creates and requires (default: 3 on a "
        "cluster of three servers or more, else 1); an existing stream with fewer is "
        "reported, and scaled up with --scale-replicas",
    )
    p.add_argument(
        "--scale-replicas",
        action="store_true",
        help="scale an existing stream with fewer replicas than --replicas (or the default) "
        "up to it (admin credentials; new replicas catch up online)",
    )
    p.add_argument(
        "--creds",
        metavar="FILE",
        default=os.environ.get("CORTEX_CREDS"),
        help="with --nats: the credentials the writer and node connect with (env "
        "CORTEX_CREDS); the embedded server's roles use the data folder's own",
    )
    p.add_argument(
        "--data",
        help=f"data folder: store, read model, writer key (default ./{DEFAULT_DATA}); "
        "with CORTEX_NATS_URL exported, also say --nats or --port",
    )
    p.add_argument(
        "--port",
        type=int,
        help=f"port of the embedded server (default {DEFAULT_PORT}); given, it wins over "
        "CORTEX_NATS_URL, and contradicts --nats",
    )
    p.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        default=Durability.SAFE.value,
        help="safe: fsync before every ack (default); fast: JetStream's lazy fsync",
    )
    p.add_argument(
        "--role",
        choices=["all", "writer", "node"],
        default="all",
        help="run the writer, the node (projector and queries), or both (default)",
    )
    p.add_argument(
        "--max-batch",
        type=batch_size,
        default=DEFAULT_MAX_BATCH,
        help="events per atomic batch (1-1000)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=positive,
        default=DEFAULT_CHECKPOINT_EVERY,
        help=f"events between signed checkpoints (default {DEFAULT_CHECKPOINT_EVERY:,})",
    )
    p.add_argument(
        "--key",
        metavar="PATH",
        help="the writer's signing key (created 0600 if missing; refused if others may read "
        "it); default: in the user's configuration folder, never in the data folder",
    )
    p.add_argument(
        "--rotate-from",
        metavar="OLD",
        help="rotate the writer key: the key in OLD signs the new --key into the ledger, so "
        "auditors pinning OLD can follow it",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=_seconds,
        default=os.environ.get("CORTEX_CHECKPOINT_INTERVAL") or DEFAULT_CHECKPOINT_INTERVAL,
        metavar="SECONDS",
        help="while events arrive, a signed checkpoint at least this often "
        f"(default {DEFAULT_CHECKPOINT_INTERVAL:g} s, or CORTEX_CHECKPOINT_INTERVAL); one on "
        "every clean stop too",
    )
    p.add_argument(
        "--require-signatures",
        action="store_true",
        help="refuse commands from agents that have no registered key",
    )
    p.add_argument(
        "--accept-unbound-signatures",
        action="store_true",
        help="also take agent signatures in the older form that names no ledger (they "
        "could be replayed from another deployment); off by default",
    )
    p.add_argument(
        "--rate-agent",
        type=_rate,
        default=DEFAULT_AGENT_RATE,
        metavar="RATE[:BURST]",
        help=f"commands per second one agent may send (default {DEFAULT_AGENT_RATE}); "
        "more is refused with rate_limited and a retry-after",
    )
    p.add_argument(
        "--rate-tenant",
        type=_rate,
        default=DEFAULT_TENANT_RATE,
        metavar="RATE[:BURST]",
        help=f"commands per second one tenant's agents together may send "
        f"(default {DEFAULT_TENANT_RATE})",
    )
    p.add_argument(
        "--witness",
        action="append",
        metavar="URL",
        help="have this witness cosign every new checkpoint, in the background (repeatable; "
        "needs --role all)",
    )
    p.add_argument(
        "--cosigned",
        metavar="DIR",
        help="with --witness: where cosigned notes are kept (default <data>/cosigned; "
        "better outside the data folder)",
    )
    # issue 12 (writer lease): one hunk, kept apart from the rest of `up`'s options.
    p.add_argument(
        "--writer-candidate",
        action="store_true",
        help="one of several writers on a shared server or cluster: serve only while "
        "holding the writer lease, take over when its holder dies or stops",
    )
    p.set_defaults(func=cmd_up)


def _receipt_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--receipt-out",
        metavar="FILE",
        help="save the receipt, with the signed checkpoint covering it, as JSON evidence "
        "(check it later: cortex verify-receipt FILE)",
    )


def _seconds(text: str) -> float:
    """An ``argparse`` type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


def _rate(text: str) -> Rate:
    """An ``argparse`` type: ``RATE`` or ``RATE:BURST``, commands per second."""
    try:
        return Rate.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not RATE or RATE:BURST (positive numbers, commands per second)"
        ) from e


def _register_writes(sub: Any, common: argparse.ArgumentParser) -> None:

    p = sub.add_parser("keygen", help="create an agent's signing key file and print its public key")
    p.add_argument("file", help="where to write the private key (0600; never overwritten)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_keygen, verbose=False)

    agent = sub.add_parser("agent", help="manage agents").add_subparsers(
        dest="sub", required=True, metavar="ACTION"
    )
    p = agent.add_parser("add", parents=[common], help="register an agent in the tenant")
    p.add_argument("agent_id")
    signer = p.add_mutually_exclusive_group()
    signer.add_argument("--public-key", help="the agent's Ed25519 public key, 64 hex digits")
    signer.add_argument(
        "--key", metavar="FILE", help="register the public key of this key file (cortex keygen)"
    )
    p.add_argument(
        "--creds-out",
        metavar="FILE",
        help="also issue NATS credentials for the agent's tenant into FILE (cortex tenant add)",
    )
    p.set_defaults(func=cmd_agent_add)

    fact = sub.add_parser("fact", help="store and deprecate facts").add_subparsers(
        dest="sub", required=True, metavar="ACTION"
    )
    p = fact.add_parser("add", parents=[common], help="store a fact")
    p.add_argument("content")
    p.add_argument("--agent", required=True, help="the registered agent asserting it")
    _fact_options(p)
    _receipt_option(p)
    p.set_defaults(func=cmd_fact_add)
    p = fact.add_parser(
        "edit",
        parents=[common],
        help="replace a fact: store its successor and deprecate it, both or neither",
    )
    p.add_argument("fact_id")
    p.add_argument("content", help="the successor's content")
    p.add_argument("--agent", required=True, help="the registered agent making the edit")
    p.add_argument(
        "--reason", default="", help="why (required unless the agent is the fact's author)"
    )
    _fact_options(p)
    p.set_defaults(func=cmd_fact_edit)
    p = fact.add_parser(
        "deprecate", parents=[common], help="deprecate a fact, optionally naming its successor"
    )
    p.add_argument("fact_id")
    p.add_argument("--agent", required=True)
    p.add_argument("--reason", default="")
    p.add_argument("--successor", help="id of the fact that replaces it")
    p.add_argument("--key", metavar="FILE", help=_SIGN_HELP)
    p.set_defaults(func=cmd_fact_deprecate)

    p = sub.add_parser("vote", parents=[common], help="vote +1 / -1 on a fact, or 0 to withdraw")
    p.add_argument("fact_id")
    p.add_argument("value", help="+1, -1 or 0 (also: up, down, withdraw)")
    p.add_argument("--agent", required=True)
    p.add_argument("--reason", default="")
    p.add_argument("--key", metavar="FILE", help=_SIGN_HELP)
    _receipt_option(p)
    p.set_defaults(func=cmd_vote)
