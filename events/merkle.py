"""RFC 6962 Merkle trees over the ledger, with the hash function as a parameter.

The structure (leaf/interior domain separation, the split at the largest power of
two below n, the audit and consistency proofs) is exactly Certificate Transparency's,
so the SHA-256 instance reproduces the published CT test vectors; CORTEX itself uses
BLAKE3. Everything here is pure and synchronous: no I/O, no clocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from events.chain import hasher

__all__ = [
    "HashFn",
    "blake3_hash",
    "sha256",
    "leaf_hash",
    "node_hash",
    "root",
    "perfect_root",
    "root_from_leaf_hashes",
    "Subtree",
    "inclusion_path",
    "inclusion_proof",
    "verify_inclusion",
    "consistency_path",
    "consistency_proof",
    "verify_consistency",
    "MerkleAccumulator",
    "TILE",
    "TILE_HEIGHT",
]

#: Tile geometry, one place for all: leaves are hashed a tile at a time into a
#: perfect subtree (the audit), and nodes store one root per complete tile (proofs).
TILE_HEIGHT = 8
TILE = 1 << TILE_HEIGHT

HashFn = Callable[[bytes], bytes]

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def blake3_hash(data: bytes) -> bytes:
    """BLAKE3, 32 bytes: the ledger's hash, and the default everywhere in this module."""
    h = hasher()  # this thread's, reused: cheaper than a new one per hash
    h.reset()
    return h.update(data).digest()


def sha256(data: bytes) -> bytes:
    """SHA-256, so the tree can be checked against the RFC 6962 / CT test vectors."""
    return hashlib.sha256(data).digest()


def leaf_hash(data: bytes, hash: HashFn = blake3_hash) -> bytes:
    """H(0x00 || data): the prefix keeps a leaf from ever passing for an interior node."""
    return hash(_LEAF_PREFIX + data)


def node_hash(left: bytes, right: bytes, hash: HashFn = blake3_hash) -> bytes:
    """H(0x01 || left || right), the interior node of RFC 6962."""
    return hash(_NODE_PREFIX + left + right)


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2): where RFC 6962 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleAccumulator:
    """Root of a growing tree in O(log n) memory, so a writer never has to keep all leaves.

    It holds one hash per set bit of `size` (the perfect subtrees the tree's leaves
    decompose into, largest first); appending merges equal-sized subtrees like a binary
    counter carries, and the root folds the subtrees from the right, which is exactly
    RFC 6962's MTH for every size.
    """

    __slots__ = ("_hash", "_peaks", "_size")

    def __init__(self, hash: HashFn = blake3_hash) -> None:
        self._hash = hash
        self._peaks: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf, given as its leaf hash (see `leaf_hash`)."""
        h = leaf_hash
        carry = self._size
        while carry & 1:
            h = node_hash(self._peaks.pop(), h, self._hash)
            carry >>= 1
        self._peaks.append(h)
        self._size += 1

    def append_subtree(self, root: bytes, height: int) -> None:
        """Add ``2**height`` leaves at once, given as their subtree's root.

        Only where the size is a multiple of that subtree's: then it is one
        of RFC 6962's perfect subtrees, and merges like a single leaf does
        one level up.
        """
        width = 1 << height
        if self._size % width:
            raise ValueError(f"a subtree of {width} leaves cannot start at leaf {self._size}")
        h = root
        carry = self._size >> height
        while carry & 1:
            h = node_hash(self._peaks.pop(), h, self._hash)
            carry >>= 1
        self._peaks.append(h)
        self._size += width

    def snapshot(self) -> Callable[[], None]:
        """A function that puts the accumulator back as it is now (O(log n))."""
        peaks, size = list(self._peaks), self._size

        def restore() -> None:
            self._peaks, self._size = list(peaks), size

        return restore

    def root(self) -> bytes:
        """The tree head of the leaves so far; H(b"") for the empty tree."""
        if not self._peaks:
            return self._hash(b"")
        r = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            r = node_hash(peak, r, self._hash)
        return r


def perfect_root(leaves: Sequence[bytes]) -> bytes:
    """MTH of a power-of-two count of raw BLAKE3 leaves, level by level.

    The same tree as ``root`` computes; one comprehension per level costs a
    bulk audit about half of appending the leaves one by one.
    """
    n = len(leaves)
    if n == 0 or n & (n - 1):
        raise ValueError(f"a perfect subtree has a power-of-two number of leaves, not {n}")
    h = hasher()  # one reused hasher for the whole subtree
    reset, update = h.reset, h.update
    level: list[bytes] = []
    for leaf in leaves:
        reset()
        level.append(update(_LEAF_PREFIX + leaf).digest())
    while len(level) > 1:
        pairs = zip(level[::2], level[1::2], strict=True)
        upper: list[bytes] = []
        for left, right in pairs:
            reset()
            upper.append(update(_NODE_PREFIX + left + right).digest())
        level = upper
    return level[0]


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes], hash: HashFn = blake3_hash) -> bytes:
    """MTH of already leaf-hashed entries, in one O(n) pass with O(log n) state."""
    acc = MerkleAccumulator(hash)
    for lh in leaf_hashes:
        acc.append(lh)
    return acc.root()


def root(leaves: Sequence[bytes], hash: HashFn = blake3_hash) -> bytes:
    """MTH (RFC 6962 section 2.1) of raw leaf data."""
    return root_from_leaf_hashes([leaf_hash(d, hash) for d in leaves], hash)


def _check_size(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _check_index(index: int, tree_size: int) -> None:
    _check_size("tree_size", tree_size)
    if not 0 <= index < tree_size:
        raise ValueError(f"leaf index {index} is out of range for a tree of {tree_size} leaves")


def _check_sizes(old_size: int, new_size: int) -> None:
    _check_size("old_size", old_size)
    _check_size("new_size", new_size)
    if old_size > new_size:
        raise ValueError(f"old_size {old_size} is larger than new_size {new_size}")


Subtree = Callable[[int, int], bytes]
"""MTH of the leaves in [lo, hi): lets a proof be built from stored subtree hashes."""


def inclusion_path(index: int, tree_size: int, subtree: Subtree) -> list[bytes]:
    """PATH(index, D[tree_size]) with subtree hashes from ``subtree``, leaf level first.

    Walks from the root down, taking the sibling subtree at each split: O(log n)
    calls, each one a perfect subtree except at the right edge.
    """
    _check_index(index, tree_size)
    path: list[bytes] = []
    lo, hi = 0, tree_size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo += k
    path.reverse()
    return path


def _over(lhs: Sequence[bytes], hash: HashFn) -> Subtree:
    return lambda lo, hi: root_from_leaf_hashes(lhs[lo:hi], hash)


def inclusion_proof(index: int, leaves: Sequence[bytes], hash: HashFn = blake3_hash) -> list[bytes]:
    """PATH(index, leaves), RFC 6962 section 2.1.1: the audit path, leaf level first."""
    _check_index(index, len(leaves))
    return inclusion_path(index, len(leaves), _over([leaf_hash(d, hash) for d in leaves], hash))


def verify_inclusion(
    leaf: bytes,
    index: int,
    tree_size: int,
    proof: Sequence[bytes],
    root: bytes,
    *,
    hash: HashFn = blake3_hash,
) -> bool:
    """True iff `proof` shows raw `leaf` at `index` in the tree of `tree_size` with `root`.

    RFC 9162 section 2.1.3.2; raises ValueError only for an impossible index/size.
    """
    _check_index(index, tree_size)
    fn, sn = index, tree_size - 1
    r = leaf_hash(leaf, hash)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r, hash)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p, hash)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_path(old_size: int, new_size: int, subtree: Subtree) -> list[bytes]:
    """PROOF(old_size, D[new_size]) with subtree hashes from ``subtree``.

    Iterative SUBPROOF: descend while old_size is not a subtree boundary, collecting
    the siblings; if we ever went right, the old tree's own subtree hash leads the proof.
    """
    _check_sizes(old_size, new_size)
    if old_size in (0, new_size):
        return []
    siblings: list[bytes] = []
    lo, hi, whole = 0, new_size, True
    while old_size != hi:
        k = _split(hi - lo)
        if old_size - lo <= k:
            siblings.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            siblings.append(subtree(lo, lo + k))
            lo += k
            whole = False
    head = [] if whole else [subtree(lo, hi)]
    return head + siblings[::-1]


def consistency_proof(
    old_size: int, new_size: int, leaves: Sequence[bytes], hash: HashFn = blake3_hash
) -> list[bytes]:
    """PROOF(old_size, leaves[:new_size]), RFC 6962 section 2.1.2; empty for the trivial cases."""
    _check_sizes(old_size, new_size)
    if new_size > len(leaves):
        raise ValueError(f"new_size {new_size} exceeds the {len(leaves)} leaves given")
    lhs = [leaf_hash(d, hash) for d in leaves[:new_size]]
    return consistency_path(old_size, new_size, _over(lhs, hash))


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
    *,
    hash: HashFn = blake3_hash,
) -> bool:
    """True iff `proof` shows the tree `new_root` extends the tree `old_root` (append-only).

    RFC 9162 section 2.1.4.2. Trivial cases need an empty proof: size 0 is consistent
    with anything (old_root must be H(b"")), equal sizes need equal roots.
    """
    _check_sizes(old_size, new_size)
    if old_size == 0:
        return not proof and old_root == hash(b"")
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is itself a node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr, hash)
            sr = node_hash(c, sr, hash)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c, hash)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
