"""Who may do what on NATS: CORTEX's roles as nats-server users with least privilege.

The trust boundary is enforced by nats-server itself, not by CORTEX code that
an attacker could route around. Each role is a user known by its public nkey
(the server holds no secret) with subject permissions:

    role    publishes                                  subscribes
    writer  cortex.ledger.>, the JetStream API it      cortex.cmd.> and cortex.admin.checkpoint,
            uses on CORTEX_LEDGER (create, info, get,   only in queue cortex-writer; the stream's
            read consumers), the writer lease (its KV   advisories; the candidates' liveness
            bucket, probes, leader stepdown); replies   probes; its own inbox
    node    the read-only JetStream API of              cortex.query.> only in queue
            CORTEX_LEDGER; replies to requests          cortex-query; its own inbox
    agent   cortex.cmd.<tenant>.>,                      its own inbox only
            cortex.query.<tenant>.>
    admin   everything                                 everything

So only the writer appends to the ledger, joins the writer's group or
answers commands; only nodes answer queries; only an admin may update,
purge or delete the stream or a message (nobody else has those API
subjects); an agent reaches nothing but its own tenant's front door and
its own replies. Nobody is anonymous: the server knows only these users.

Each user's inbox is ``_INBOX.<public key>`` (nats-py's ``inbox_prefix``),
so no one can subscribe to another's replies.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from cortex.nats.subjects import CHECKPOINT_SUBJECT, COMMAND_PREFIX, LEDGER_PREFIX, STREAM

QUERY_PREFIX: Final = "cortex.query"
WRITER_QUEUE: Final = "cortex-writer"
QUERY_QUEUE: Final = "cortex-query"
_API: Final = "$JS.API"

#: The JetStream API subjects that read CORTEX_LEDGER, as nats-py sends them
#: (``nats/js/manager.py``, ``nats/js/client.py``): stream info, get one
#: message, and the ephemeral pull consumers ``cortex.nats.consumer`` reads with.
READ_API: Final = (
    f"{_API}.STREAM.INFO.{STREAM}",
    f"{_API}.STREAM.MSG.GET.{STREAM}",
    f"{_API}.CONSUMER.CREATE.{STREAM}",
    f"{_API}.CONSUMER.CREATE.{STREAM}.>",
    f"{_API}.CONSUMER.INFO.{STREAM}.*",
    f"{_API}.CONSUMER.DELETE.{STREAM}.*",
    f"{_API}.CONSUMER.MSG.NEXT.{STREAM}.*",
)
#: The writer lease (``cortex.lease``): the KV bucket's stream (create it, read and
#: watch its key), its key's subjects, the probes between candidates, and asking the
#: ledger's stream leader to step down (a clean stop hands over leadership first).
LEASE_STREAM: Final = "KV_CORTEX_WRITER"
ALIVE_SUBJECTS: Final = "cortex.writer.alive.>"
LEASE_API: Final = (
    "$KV.CORTEX_WRITER.>",
    f"{_API}.STREAM.CREATE.{LEASE_STREAM}",
    f"{_API}.STREAM.INFO.{LEASE_STREAM}",
    f"{_API}.STREAM.MSG.GET.{LEASE_STREAM}",
    f"{_API}.DIRECT.GET.{LEASE_STREAM}",
    f"{_API}.DIRECT.GET.{LEASE_STREAM}.>",
    f"{_API}.CONSUMER.CREATE.{LEASE_STREAM}",
    f"{_API}.CONSUMER.CREATE.{LEASE_STREAM}.>",
    f"{_API}.CONSUMER.INFO.{LEASE_STREAM}.*",
    f"{_API}.CONSUMER.DELETE.{LEASE_STREAM}.*",
    "$JS.FC.>",
    ALIVE_SUBJECTS,
    f"{_API}.STREAM.LEADER.STEPDOWN.{STREAM}",
)
#: What only an admin may do to the stream (nobody else is granted these).
ADMIN_ONLY_API: Final = (
    f"{_API}.STREAM.UPDATE.{STREAM}",
    f"{_API}.STREAM.DELETE.{STREAM}",
    f"{_API}.STREAM.PURGE.{STREAM}",
    f"{_API}.STREAM.MSG.DELETE.{STREAM}",
)


class Role(enum.Enum):
    """A kind of NATS user CORTEX knows."""

    ADMIN = "admin"
    WRITER = "writer"
    NODE = "node"
    AGENT = "agent"


def inbox_prefix(public_key: str) -> str:
    """The only inbox a user may subscribe to (nats-py's ``inbox_prefix``)."""
    return f"_INBOX.{public_key}"


class User(NamedTuple):
    """One nats-server user: its public nkey, role and (for an agent) tenant."""

    public_key: str
    role: Role
    tenant: str = ""


class Permissions(NamedTuple):
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    #: May answer the requests it receives (one reply each), whatever their reply subject.
    responses: bool = False


def permissions(user: User) -> Permissions | None:
    """The subjects ``user`` may use; None for an admin (everything)."""
    inbox = f"{inbox_prefix(user.public_key)}.>"
    match user.role:
        case Role.ADMIN:
            return None
        case Role.WRITER:
            return Permissions(
                publish=(
                    f"{LEDGER_PREFIX}.>",
                    f"{_API}.STREAM.CREATE.{STREAM}",
                    *READ_API,
                    *LEASE_API,
                ),
                subscribe=(
                    f"{COMMAND_PREFIX}.> {WRITER_QUEUE}",
                    f"{CHECKPOINT_SUBJECT} {WRITER_QUEUE}",
                    f"$JS.EVENT.ADVISORY.STREAM.*.{STREAM}",
                    ALIVE_SUBJECTS,
                    inbox,
                ),
                responses=True,
            )
        case Role.NODE:
            return Permissions(
                publish=READ_API,
                subscribe=(f"{QUERY_PREFIX}.> {QUERY_QUEUE}", inbox),
                responses=True,
            )
        case Role.AGENT:
            if not user.tenant:
                raise ValueError("an agent user needs its tenant")
            return Permissions(
                publish=(
                    f"{COMMAND_PREFIX}.{user.tenant}.>",
                    f"{QUERY_PREFIX}.{user.tenant}.>",
                ),
                subscribe=(inbox,),
            )


def _user_block(user: User) -> str:
    perms = permissions(user)
    lines = [f"    {{ nkey: {json.dumps(user.public_key)}"]
    if perms is None:
        lines.append('      permissions: { publish: ">", subscribe: ">" } }')
        return "\n".join(lines)
    lines.append("      permissions: {")
    lines.append(f"        publish: {{ allow: {json.dumps(list(perms.publish))} }}")
    lines.append(f"        subscribe: {{ allow: {json.dumps(list(perms.subscribe))} }}")
    if perms.responses:
        lines.append("        allow_responses: true")
    lines.append("      } }")
    return "\n".join(lines)


def authorization(users: Iterable[User]) -> str:
    """nats-server configuration text that admits exactly ``users``, each with its
    permissions (and nobody without credentials)."""
    blocks = [_user_block(u) for u in users]
    if not blocks:
        raise ValueError("a server with no users would admit nobody")
    body = "\n".join(blocks)
    return (
        "# Written by CORTEX from the data folder's credentials: do not edit.\n"
        "# Users are known by public nkey only; the server holds no secret.\n"
        f"# Roles and permissions: cortex/nats/permissions.py.\n"
        f"authorization {{\n  users = [\n{body}\n  ]\n}}\n"
    )


def roles_table(users: Sequence[User] = ()) -> str:
    """The permission table as text, for ``ops/`` and operators of external servers."""
    sample = list(users) or [
        User("U<WRITER>", Role.WRITER),
        User("U<NODE>", Role.NODE),
        User("U<AGENT>", Role.AGENT, "<tenant>"),
        User("U<ADMIN>", Role.ADMIN),
    ]
    return authorization(sample)
