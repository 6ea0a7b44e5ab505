"""Ed25519 key files: the writer's checkpoint key and agents' signing keys.

A key file holds the private key as unencrypted PKCS#8 PEM, readable by its
owner only (0600); it is created once and never rewritten. The writer's key
name (``cortex-writer/<first 16 hex of the public key>``) goes into every
checkpoint's signature line.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from cortex.errors import CortexError
from events.note import raw_public, verifier_key

WRITER_KEY_FILE: Final = "writer.key"


@dataclass(frozen=True, slots=True)
class WriterKey:
    """The writer's signing key with the names it goes by."""

    private: Ed25519PrivateKey

    @property
    def public_hex(self) -> str:
        return raw_public(self.private.public_key()).hex()

    @property
    def name(self) -> str:
        return f"cortex-writer/{self.public_hex[:16]}"

    @property
    def verifier(self) -> str:
        """The C2SP verifier key to hand to whoever checks checkpoints."""
        return verifier_key(self.name, raw_public(self.private.public_key()))


def public_hex(key: Ed25519PrivateKey) -> str:
    return raw_public(key.public_key()).hex()


def load_key(path: Path) -> Ed25519PrivateKey:
    """Read a key file; a clear error if it is missing or not an Ed25519 key."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as e:
        raise CortexError(f"no key file at {path}", code="no_key") from e
    except ValueError as e:
        raise CortexError(f"{path} is not a PEM private key: {e}", code="bad_key") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise CortexError(f"{path} is not an Ed25519 key", code="bad_key")
    return key


def create_key(path: Path) -> Ed25519PrivateKey:
    """Write a new key file (0600); refuses to overwrite one."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise CortexError(f"{path} already exists; not overwriting a key", code="key_exists") from e
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return key


def writer_key(data: Path) -> WriterKey:
    """The writer key in the data folder, created on first start (tests, the demo;
    ``cortex up`` keeps its key outside the folder: ``writer_key_at``)."""
    path = data / WRITER_KEY_FILE
    return WriterKey(load_key(path) if path.exists() else create_key(path))


def config_dir() -> Path:
    """The user's CORTEX configuration folder: ``$XDG_CONFIG_HOME/cortex`` or
    ``~/.config/cortex``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cortex"


def default_key_path(data: Path) -> Path:
    """Where ``cortex up`` keeps the writer key of ``data`` by default: in the user's
    configuration folder, named after the data folder's absolute path (so a copy of
    the folder carries no key that can re-sign its checkpoints)."""
    folder_id = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:16]
    return config_dir() / f"writer-{folder_id}.key"


def writer_key_at(path: Path) -> WriterKey:
    """The writer key in ``path``, created (0600) if missing; refused if anyone but
    its owner may read it."""
    if not path.exists():
        return WriterKey(create_key(path))
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CortexError(
            f"{path} may be read by others (mode {stat.S_IMODE(mode):o}): a writer key must be "
            f"readable by its owner only (chmod 600 {path})",
            code="bad_key",
        )
    return WriterKey(load_key(path))
