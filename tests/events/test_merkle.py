"""Tests for events.merkle: RFC 6962 tree heads, audit and consistency proofs.

The SHA-256 vectors are the Certificate Transparency reference data (as published in
google/certificate-transparency and transparency-dev/merkle); the exhaustive sweeps
use the BLAKE3 default, which is what the ledger actually runs on.
"""

from __future__ import annotations

import functools

import pytest

from events import merkle
from events.merkle import (
    MerkleAccumulator,
    blake3_hash,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    root_from_leaf_hashes,
    sha256,
    verify_consistency,
    verify_inclusion,
)

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]

# CT_ROOTS[n - 1] is the SHA-256 tree head of the first n leaves.
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

# (0-based leaf index, tree size, audit path)
CT_INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (old size, new size, consistency proof)
CT_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]

MAX_SIZE = 40
LEAVES = [f"event-{i}".encode() for i in range(MAX_SIZE + 1)]


def _flip(b: bytes) -> bytes:
    """Same length, first byte changed: the smallest possible tampering."""
    return bytes([b[0] ^ 0x01]) + b[1:]


def _mth_reference(leaves: list[bytes], hash: merkle.HashFn) -> bytes:
    """RFC 6962 section 2.1 MTH, transcribed literally as an independent oracle."""
    n = len(leaves)
    if n == 0:
        return hash(b"")
    if n == 1:
        return hash(b"\x00" + leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return hash(b"\x01" + _mth_reference(leaves[:k], hash) + _mth_reference(leaves[k:], hash))


@functools.cache
def _root(n: int) -> bytes:
    return root(LEAVES[:n])


@functools.cache
def _inclusion(index: int, n: int) -> tuple[bytes, ...]:
    return tuple(inclusion_proof(index, LEAVES[:n]))


@functools.cache
def _consistency(old: int, new: int) -> tuple[bytes, ...]:
    return tuple(consistency_proof(old, new, LEAVES))


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    """The empty tree head is H(b""), as RFC 6962 defines it, for either hash."""
    assert root([], sha256).hex() == EMPTY_SHA256
    assert root_from_leaf_hashes([], sha256).hex() == EMPTY_SHA256
    assert MerkleAccumulator(sha256).root().hex() == EMPTY_SHA256
    assert root([]) == blake3_hash(b"")


@pytest.mark.parametrize("size", range(1, 9))
def test_sha256_roots_match_ct_reference(size: int) -> None:
    """With SHA-256 the tree heads are byte-for-byte the CT reference roots."""
    assert root(CT_LEAVES[:size], sha256).hex() == CT_ROOTS[size - 1]
    acc = MerkleAccumulator(sha256)
    for data in CT_LEAVES[:size]:
        acc.append(leaf_hash(data, sha256))
    assert acc.root().hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_sha256_inclusion_proofs_match_ct_reference(index: int, size: int, path: list[str]) -> None:
    """Audit paths equal the CT reference paths, and the reference paths verify."""
    leaves = CT_LEAVES[:size]
    assert [p.hex() for p in inclusion_proof(index, leaves, sha256)] == path
    proof = [bytes.fromhex(p) for p in path]
    head = bytes.fromhex(CT_ROOTS[size - 1])
    assert verify_inclusion(CT_LEAVES[index], index, size, proof, head, hash=sha256)


@pytest.mark.parametrize(("old", "new", "path"), CT_CONSISTENCY)
def test_sha256_consistency_proofs_match_ct_reference(old: int, new: int, path: list[str]) -> None:
    """Consistency proofs equal the CT reference proofs, and the reference proofs verify."""
    assert [p.hex() for p in consistency_proof(old, new, CT_LEAVES, sha256)] == path
    proof = [bytes.fromhex(p) for p in path]
    old_root, new_root = bytes.fromhex(CT_ROOTS[old - 1]), bytes.fromhex(CT_ROOTS[new - 1])
    assert verify_consistency(old, new, old_root, new_root, proof, hash=sha256)


@pytest.mark.parametrize("hash_fn", [sha256, blake3_hash])
def test_root_matches_literal_rfc_definition(hash_fn: merkle.HashFn) -> None:
    """The stack-based root equals the recursive RFC 6962 MTH for every small size."""
    data = [bytes([i]) * (i % 7) for i in range(70)]
    for n in range(len(data) + 1):
        assert root(data[:n], hash_fn) == _mth_reference(data[:n], hash_fn)


def test_leaf_cannot_pose_as_interior_node() -> None:
    """Domain separation: a leaf holding two child hashes does not reproduce their parent."""
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert root([b"a", b"b"]) == node_hash(left, right)
    assert root([left + right]) != root([b"a", b"b"])


def test_root_of_a_million_leaves_is_iterative() -> None:
    """Over a million leaves there is no recursion limit and the shape is still RFC 6962."""
    x = leaf_hash(b"x")
    perfect = x
    for _ in range(20):
        perfect = node_hash(perfect, perfect)
    assert root_from_leaf_hashes([x] * (2**20 + 1)) == node_hash(perfect, x)


def test_accumulator_equals_root_for_every_size() -> None:
    """The O(log n) accumulator gives the same head as root() at every size 0..100."""
    data = [f"leaf {i}".encode() for i in range(101)]
    acc = MerkleAccumulator()
    assert acc.size == 0
    assert acc.root() == root([])
    for n in range(1, 101):
        acc.append(leaf_hash(data[n - 1]))
        assert acc.size == n
        assert acc.root() == root(data[:n])
        assert acc.root() == root_from_leaf_hashes([leaf_hash(d) for d in data[:n]])
    assert len(acc._peaks) == bin(100).count("1")


@pytest.mark.parametrize("n", range(1, MAX_SIZE + 1))
def test_inclusion_proofs_verify_and_reject_tampering(n: int) -> None:
    """Every audit path verifies, and any change to proof, leaf, index, size or root fails."""
    head = _root(n)
    for i in range(n):
        proof = list(_inclusion(i, n))
        leaf = LEAVES[i]
        assert verify_inclusion(leaf, i, n, proof, head)
        for k in range(len(proof)):
            bad = proof.copy()
            bad[k] = _flip(bad[k])
            assert not verify_inclusion(leaf, i, n, bad, head)
        assert not verify_inclusion(leaf, i, n, [*proof, head], head)
        assert not verify_inclusion(leaf, i, n, [head, *proof], head)
        if proof:
            assert not verify_inclusion(leaf, i, n, proof[:-1], head)
        assert not verify_inclusion(b"not" + leaf, i, n, proof, head)
        assert not verify_inclusion(leaf, i, n, proof, _flip(head))
        assert not verify_inclusion(leaf, i, n, proof, _root(n + 1))
        for j in range(n):
            if j != i:
                assert not verify_inclusion(leaf, j, n, proof, head)
                assert not verify_inclusion(LEAVES[j], j, n, proof, head)
        # A path binds the size only through the root it meets: against the genuine head
        # of another size it passes exactly when that size's path is the same list, and
        # against this head it fails whenever that size needs a path of another length.
        for s in range(i + 1, MAX_SIZE + 1):
            if s != n:
                same = _inclusion(i, s) == tuple(proof)
                assert verify_inclusion(leaf, i, s, proof, _root(s)) == same
                if len(_inclusion(i, s)) != len(proof):
                    assert not verify_inclusion(leaf, i, s, proof, head)


@pytest.mark.parametrize("new", range(1, MAX_SIZE + 1))
def test_consistency_proofs_verify_and_reject_tampering(new: int) -> None:
    """Every consistency proof verifies, and any change to proof, roots or sizes fails."""
    new_root = _root(new)
    for old in range(new + 1):
        proof = list(_consistency(old, new))
        old_root = _root(old)
        assert verify_consistency(old, new, old_root, new_root, proof)
        for k in range(len(proof)):
            bad = proof.copy()
            bad[k] = _flip(bad[k])
            assert not verify_consistency(old, new, old_root, new_root, bad)
        assert not verify_consistency(old, new, _flip(old_root), new_root, proof)
        if old > 0:
            assert not verify_consistency(old, new, old_root, _flip(new_root), proof)
        if 0 < old < new:
            assert not verify_consistency(old, new, new_root, old_root, proof)
            assert not verify_consistency(old, new, old_root, new_root, [])
            assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
            assert not verify_consistency(old, new, old_root, new_root, [*proof, new_root])
            assert not verify_consistency(old, new, old_root, new_root, [proof[0], *proof])
        # Against the genuine roots of other sizes the proof passes only where the
        # proof for those sizes is literally the same list; against these roots it
        # fails whenever the other sizes need a proof of another length.
        for other in range(new + 1):
            if other != old:
                same = _consistency(other, new) == tuple(proof)
                got = verify_consistency(other, new, _root(other), new_root, proof)
                assert got == same
                if len(_consistency(other, new)) != len(proof):
                    assert not verify_consistency(other, new, old_root, new_root, proof)
        for other in range(old, MAX_SIZE + 1):
            if other != new:
                same = _consistency(old, other) == tuple(proof)
                got = verify_consistency(old, other, old_root, _root(other), proof)
                assert got == same
                if len(_consistency(old, other)) != len(proof):
                    assert not verify_consistency(old, other, old_root, new_root, proof)


def test_bad_arguments_raise_value_error() -> None:
    """Impossible indices and sizes are caller bugs: ValueError that names the problem."""
    leaves = LEAVES[:5]
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof(5, leaves)
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof(-1, leaves)
    with pytest.raises(ValueError, match="out of range"):
        inclusion_proof(0, [])
    with pytest.raises(ValueError, match="out of range"):
        verify_inclusion(leaves[0], 5, 5, [], _root(5))
    with pytest.raises(ValueError, match="tree_size must be >= 0"):
        verify_inclusion(leaves[0], 0, -1, [], _root(5))
    with pytest.raises(ValueError, match="larger than new_size"):
        consistency_proof(4, 3, leaves)
    with pytest.raises(ValueError, match="old_size must be >= 0"):
        consistency_proof(-1, 3, leaves)
    with pytest.raises(ValueError, match="exceeds the 5 leaves"):
        consistency_proof(2, 6, leaves)
    with pytest.raises(ValueError, match="larger than new_size"):
        verify_consistency(4, 3, _root(4), _root(3), [])
    with pytest.raises(ValueError, match="new_size must be >= 0"):
        verify_consistency(0, -2, _root(0), _root(0), [])


def test_trivial_consistency_needs_empty_proof_and_matching_roots() -> None:
    """Size 0 and equal sizes are consistent only with an empty proof and the right roots."""
    assert verify_consistency(0, 7, _root(0), _root(7), [])
    assert not verify_consistency(0, 7, _root(0), _root(7), [_root(7)])
    assert not verify_consistency(0, 7, _root(3), _root(7), [])
    assert verify_consistency(7, 7, _root(7), _root(7), [])
    assert not verify_consistency(7, 7, _root(7), _root(6), [])
    assert not verify_consistency(7, 7, _root(7), _root(7), [_root(7)])
