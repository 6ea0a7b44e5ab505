"""Agents sign what they send: the writer checks every signature at the door,
a refused command appends nothing, and a stored event can be checked again later."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cortex import cli
from cortex.client import Client, new_id
from cortex.core.keys import load_key, public_hex
from cortex.errors import CortexError
from cortex.nats import Bus, EmbeddedServer
from cortex.writer import LedgerWriter
from events.codec import decode_event
from events.commands import CastVote
from events.model import FactStored, VoteCast
from events.signing import sign_command, verify_event

TENANT = "acme"
WAIT = 30.0  # bound on every wait for the server or a CLI run


async def _fact(client: Client, agent: str, key: Ed25519PrivateKey | None = None) -> uuid.UUID:
    receipt = await client.store_fact(agent, "Water boils at 100 °C at sea level.", key=key)
    assert receipt.fact_id is not None
    return receipt.fact_id


async def _refused(bus: Bus, call: Any, code: str) -> CortexError:
    """Await ``call``, expecting a refusal with ``code`` and no event appended."""
    before = await bus.last_seq()
    with pytest.raises(CortexError) as info:
        await asyncio.wait_for(call, WAIT)
    assert info.value.code == code, info.value.message
    assert await bus.last_seq() == before
    return info.value


async def _origin(bus: Bus) -> bytes:
    """The ledger's origin, which the client signs into agents' commands."""
    return (await bus.get(1)).hash


# -- the client ---------------------------------------------------------------


async def test_a_signed_vote_is_stored_with_a_signature_that_verifies(
    client: Client, bus: Bus
) -> None:
    """Registered with its private key, the client signs as the agent from then on."""
    key = Ed25519PrivateKey.generate()
    await client.register_agent("ada", public_key=key)
    fact = await _fact(client, "ada")
    receipt = await client.vote("ada", fact, 1, reason="measured it")

    event = decode_event((await bus.get(receipt.seq)).body)
    assert isinstance(event, VoteCast)
    assert event.signature is not None
    assert verify_event(event, public_hex(key), await _origin(bus))
    assert not verify_event(event, public_hex(Ed25519PrivateKey.generate()), await _origin(bus))
    stored = decode_event((await bus.get(receipt.seq - 1)).body)
    assert isinstance(stored, FactStored)
    assert verify_event(stored, public_hex(key), await _origin(bus))


async def test_keys_given_at_connect_or_per_call_sign_too(
    server: EmbeddedServer, client: Client, bus: Bus
) -> None:
    ada, bob = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    await client.register_agent("ada", public_key=public_hex(ada))
    await client.register_agent("bob", public_key=bob.public_key())
    async with await Client.connect(server.url, tenant=TENANT, keys={"ada": ada}) as keyed:
        fact = await _fact(keyed, "ada")
    receipt = await client.vote("bob", fact, -1, key=bob)
    event = decode_event((await bus.get(receipt.seq)).body)
    assert verify_event(event, public_hex(bob), await _origin(bus))


async def test_concurrent_signed_calls_are_still_batched(client: Client) -> None:
    """Signing happens before a call joins the queue; batching is unchanged."""
    key = Ed25519PrivateKey.generate()
    await client.register_agent("ada", public_key=key)
    before = client.requests_sent
    receipts = await asyncio.gather(*(client.store_fact("ada", f"f{i}") for i in range(200)))
    assert len({r.seq for r in receipts}) == 200
    assert client.requests_sent - before <= 200 // 10


async def test_an_unsigned_command_from_a_keyed_agent_is_refused(client: Client, bus: Bus) -> None:
    key = Ed25519PrivateKey.generate()
    await client.register_agent("ada", public_key=public_hex(key))  # the client keeps no key
    await _refused(bus, client.store_fact("ada", "unsigned"), "signature_required")
    fact = await _fact(client, "ada", key=key)
    await _refused(bus, client.vote("ada", fact, 1), "signature_required")


async def test_a_signature_by_another_key_is_refused(client: Client, bus: Bus) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    await client.register_agent("ada", public_key=key)
    fact = await _fact(client, "ada")
    error = await _refused(bus, client.vote("ada", fact, 1, key=other), "bad_signature")
    assert "ada" in error.message
    await _refused(bus, client.deprecate_fact("ada", fact, key=other), "bad_signature")


async def test_a_signature_from_an_agent_without_a_key_is_refused(client: Client, bus: Bus) -> None:
    await client.register_agent("ada")
    key = Ed25519PrivateKey.generate()
    await _refused(bus, client.store_fact("ada", "signed, but by whom?", key=key), "bad_signature")


async def test_a_field_changed_after_signing_is_refused(client: Client, bus: Bus) -> None:
    key = Ed25519PrivateKey.generate()
    await client.register_agent("ada", public_key=key)
    fact = await _fact(client, "ada")
    signed = sign_command(
        CastVote(id=new_id(), fact_id=fact, agent_id="ada", value=1),
        TENANT,
        key,
        origin=await client.origin(),
    )
    flipped = msgspec.structs.replace(signed, value=-1)
    await _refused(bus, client.submit(flipped), "bad_signature")


async def test_a_signature_for_another_tenant_is_refused(
    server: EmbeddedServer, client: Client, bus: Bus
) -> None:
    """Same agent name, same key, another tenant: the signature binds the tenant."""
    key = Ed25519PrivateKey.generate()
    await client.register_agent("ada", public_key=key)
    fact = await _fact(client, "ada")
    signed = sign_command(
        CastVote(id=new_id(), fact_id=fact, agent_id="ada", value=1),
        "elsewhere",
        key,
        origin=await client.origin(),
    )
    await _refused(bus, client.submit(signed), "bad_signature")


async def test_replaying_a_signed_command_appends_nothing(client: Client, bus: Bus) -> None:
    """The exact command again (same id) gets the original receipt back."""
    key = Ed25519PrivateKey.generate()
    await client.register_agent("ada", public_key=key)
    fact = await _fact(client, "ada")
    signed = sign_command(
        CastVote(id=new_id(), fact_id=fact, agent_id="ada", value=1),
        TENANT,
        key,
        origin=await client.origin(),
    )
    first = await client.submit(signed)
    before = await bus.last_seq()
    again = await client.submit(signed)
    assert (again.seq, again.hash, again.id) == (first.seq, first.hash, first.id)
    assert await bus.last_seq() == before


async def test_an_old_signature_on_a_new_id_is_refused(client: Client, bus: Bus) -> None:
    """A captured signature cannot be replayed as a new event: it covers the id."""
    key = Ed25519PrivateKey.generate()
    await client.register_agent("ada", public_key=key)
    fact = await _fact(client, "ada")
    signed = sign_command(
        CastVote(id=new_id(), fact_id=fact, agent_id="ada", value=1),
        TENANT,
        key,
        origin=await client.origin(),
    )
    await client.submit(signed)
    await _refused(
        bus, client.submit(msgspec.structs.replace(signed, id=new_id())), "bad_signature"
    )


async def test_a_signature_that_names_no_ledger_is_refused_unless_the_writer_accepts_it(
    server: EmbeddedServer, bus: Bus
) -> None:
    """The older form signs no origin, so one captured on another deployment would
    hold here too: refused, saying how to sign; a writer told to accept it does."""
    key = Ed25519PrivateKey.generate()
    async with _writer(server), await Client.connect(server.url, tenant=TENANT) as client:
        await client.register_agent("ada", public_key=key)
        fact = await _fact(client, "ada", key)
        vote = CastVote(id=new_id(), fact_id=fact, agent_id="ada", value=1)
        unbound = sign_command(vote, TENANT, key)  # no origin: the older form
        refused = await _refused(bus, client.submit(unbound), "bad_signature")
        assert "names no ledger" in refused.message
        assert (await client.origin()).hex() in refused.message
    async with (
        _writer(server, accept_unbound_signatures=True),
        await Client.connect(server.url, tenant=TENANT) as client,
    ):
        receipt = await client.submit(unbound)
        assert verify_event(decode_event((await bus.get(receipt.seq)).body), public_hex(key))


# -- a ledger that requires signatures ---------------------------------------


@contextlib.asynccontextmanager
async def _writer(server: EmbeddedServer, **options: Any) -> AsyncIterator[LedgerWriter]:
    """A writer on its own connection, stopped on the way out (one at a time per server)."""
    b = await Bus.connect(server.url, name="writer")
    w = LedgerWriter(b, **options)
    try:
        await asyncio.wait_for(w.start(), WAIT)
        yield w
    finally:
        await asyncio.wait_for(w.stop(), WAIT)
        await b.close()


async def test_require_signatures_refuses_agents_without_a_key(
    server: EmbeddedServer, bus: Bus
) -> None:
    """An agent registered before signatures were required can no longer write;
    nor can a new agent be registered without a key. Keyed agents carry on."""
    key = Ed25519PrivateKey.generate()
    async with _writer(server), await Client.connect(server.url, tenant=TENANT) as client:
        await client.register_agent("old")
        await client.register_agent("ada", public_key=key)

    async with (
        _writer(server, require_signatures=True),
        await Client.connect(server.url, tenant=TENANT, keys={"ada": key}) as client,
    ):
        await _refused(bus, client.store_fact("old", "unsigned"), "signature_required")
        await _refused(bus, client.register_agent("eve"), "signature_required")
        fact = await _fact(client, "ada")
        receipt = await client.vote("ada", fact, 1)
        assert verify_event(
            decode_event((await bus.get(receipt.seq)).body), public_hex(key), await _origin(bus)
        )
        await client.register_agent("eve", public_key=Ed25519PrivateKey.generate())


# -- the command line ---------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """``cortex.cli.main`` in a thread (it runs its own event loop), output captured."""
    logging = structlog.get_config()

    async def run(*args: str) -> Run:
        code = await asyncio.wait_for(asyncio.to_thread(cli.main, list(args)), WAIT)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    yield run
    structlog.configure(**logging)  # main configures logging onto the captured stderr


async def test_cli_keygen_agent_add_and_a_signed_vote(
    server: EmbeddedServer, writer: LedgerWriter, bus: Bus, run_cli: Any, tmp_path: Path
) -> None:
    url = ("--nats", server.url, "--tenant", "lab")
    key_file = tmp_path / "keys" / "ada.key"

    made = await run_cli("keygen", str(key_file), "--json")
    assert made.code == 0, made.err
    public = made.json()["public_key"]
    assert public == public_hex(load_key(key_file))
    assert key_file.stat().st_mode & 0o777 == 0o600

    assert (await run_cli("agent", "add", "ada", "--key", str(key_file), *url)).code == 0
    stored = await run_cli(
        "fact", "add", "Light is a wave", "--agent", "ada", "--key", str(key_file), "--json", *url
    )
    assert stored.code == 0, stored.err
    fact = stored.json()["fact_id"]
    voted = await run_cli(
        "vote", fact, "+1", "--agent", "ada", "--key", str(key_file), "--json", *url
    )
    assert voted.code == 0, voted.err

    event = decode_event((await bus.get(voted.json()["seq"])).body)
    assert isinstance(event, VoteCast)
    assert verify_event(event, public, await _origin(bus))
    gone = await run_cli("fact", "deprecate", fact, "--agent", "ada", "--key", str(key_file), *url)
    assert gone.code == 0, gone.err
    assert "receipt: seq" in gone.out


async def test_cli_refusals_are_one_line_and_append_nothing(
    server: EmbeddedServer, writer: LedgerWriter, bus: Bus, run_cli: Any, tmp_path: Path
) -> None:
    url = ("--nats", server.url)
    key_file, other_file = tmp_path / "ada.key", tmp_path / "other.key"
    assert (await run_cli("keygen", str(key_file))).code == 0
    assert (await run_cli("keygen", str(other_file))).code == 0
    assert (await run_cli("agent", "add", "ada", "--key", str(key_file), *url)).code == 0
    stored = await run_cli(
        "fact", "add", "x", "--agent", "ada", "--key", str(key_file), "--json", *url
    )
    fact = stored.json()["fact_id"]
    before = await bus.last_seq()

    cases = [
        (("vote", fact, "+1", "--agent", "ada", *url), "signature_required"),
        (("vote", fact, "+1", "--agent", "ada", "--key", str(other_file), *url), "bad_signature"),
        (("vote", fact, "+1", "--agent", "ada", "--key", str(tmp_path / "nope"), *url), "no_key"),
        (("vote", fact, "+1", "--agent", "ada", "--key", str(tmp_path), *url), "bad_key"),
        (("fact", "add", "y", "--agent", "ada", "--key", str(other_file), *url), "bad_signature"),
        (("keygen", str(key_file)), "key_exists"),
    ]
    for args, code in cases:
        run = await run_cli(*args)
        assert run.code == 1, args
        assert code in run.err, (args, run.err)
        assert "Traceback" not in run.err
    assert await bus.last_seq() == before
    assert (await run_cli("keygen", str(key_file), "--json")).json()["error"][
        "code"
    ] == "key_exists"


def test_cli_agent_add_takes_a_key_file_or_a_public_key_not_both() -> None:
    assert cli.main(["agent", "add", "ada", "--key", "k", "--public-key", "0" * 64]) == 1
