"""The reused BLAKE3 hasher changes no hash: each function against its plain form.

``events.chain`` and ``events.merkle`` reuse one hasher per thread (``reset``)
instead of making one per hash; the ledger's bytes must not notice. Compared on
random inputs, interleaved with each other, and from several threads at once.
"""

from __future__ import annotations

import random
import threading

import blake3

from events import chain, merkle


def _plain_link(prev: bytes, body: bytes) -> bytes:
    return blake3.blake3(chain.DOMAIN + prev + body).digest()


def _plain_leaf(data: bytes) -> bytes:
    return blake3.blake3(b"\x00" + data).digest()


def _plain_node(left: bytes, right: bytes) -> bytes:
    return blake3.blake3(b"\x01" + left + right).digest()


def _plain_root(leaves: list[bytes]) -> bytes:
    level = [_plain_leaf(x) for x in leaves]
    while len(level) > 1:
        level = [_plain_node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _rand(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def test_link_and_nodes_equal_the_plain_form_on_random_inputs() -> None:
    rng = random.Random(14)
    for _ in range(2000):
        # Sizes around BLAKE3's block (64) and chunk (1024) edges, and larger.
        body = _rand(rng, rng.choice([0, 1, 63, 64, 65, 1023, 1024, 1025, rng.randrange(5000)]))
        prev, other = _rand(rng, 32), _rand(rng, 32)
        assert chain.link(prev, body) == _plain_link(prev, body)
        assert merkle.blake3_hash(body) == blake3.blake3(body).digest()
        assert merkle.leaf_hash(body) == _plain_leaf(body)
        assert merkle.node_hash(prev, other) == _plain_node(prev, other)


def test_the_verifier_links_as_link_does() -> None:
    rng = random.Random(15)
    verifier = chain.ChainVerifier()
    head = chain.GENESIS
    for seq in range(1, 500):
        body = _rand(rng, rng.randrange(2000))
        own = _plain_link(head, body)
        chain.link(_rand(rng, 32), body)  # another hash on this thread in between
        assert verifier.follows(seq, body, head, own)
        assert verifier.computed == own
        head = own


def test_perfect_roots_equal_the_plain_tree() -> None:
    rng = random.Random(16)
    for height in range(9):
        for _ in range(5):
            leaves = [_rand(rng, rng.choice([32, rng.randrange(300)])) for _ in range(1 << height)]
            expected = _plain_root(leaves)
            assert merkle.perfect_root(leaves) == expected
            assert merkle.root(leaves) == expected


def test_threads_hashing_at_once_get_their_own_hashes() -> None:
    failures: list[str] = []
    start = threading.Barrier(4)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(3000):
            prev, body = _rand(rng, 32), _rand(rng, rng.randrange(1, 3000))
            if chain.link(prev, body) != _plain_link(prev, body):
                failures.append(f"link differs in thread {seed}")
            if merkle.node_hash(prev, body[:32]) != _plain_node(prev, body[:32]):
                failures.append(f"node differs in thread {seed}")
        leaves = [_rand(rng, 32) for _ in range(256)]
        if merkle.perfect_root(leaves) != _plain_root(leaves):
            failures.append(f"perfect root differs in thread {seed}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
