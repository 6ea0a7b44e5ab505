from cortex.client import Client
from cortex.nats import Bus


async def test_store_and_vote_appends_chained_events(client: Client, bus: Bus) -> None:
    """A registered agent's fact and vote land as consecutive ledger events."""
    r1 = await client.register_agent("alice")
    r2 = await client.store_fact("alice", "water boils at 100C")
    assert r2.fact_id is not None
    r3 = await client.vote("alice", r2.fact_id, 1)
    assert (r1.seq, r2.seq, r3.seq) == (1, 2, 3)
    events = [e async for e in bus.read(1)]
    assert [e.hash.hex() for e in events] == [r1.hash, r2.hash, r3.hash]
    assert events[1].prev_hash == events[0].hash
