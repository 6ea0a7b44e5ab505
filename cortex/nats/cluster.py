"""A JetStream cluster of real nats-servers on loopback: CORTEX's high-availability engine.

``ClusterServers(data, nodes=3)`` runs N ``ClusterMember`` servers (each an
``EmbeddedServer`` as a cluster member) that replicate the ledger with Raft
inside nats-server. The folder ``data`` holds::

    auth/           one set of users for every member (``LocalAuth``), the
                    route password (route.secret) and routes.conf, 0700
    n1/ n2/ n3/     each member's nats-server.conf, store/ and nats.pid
    cluster.json    the members' names and client URLs (``cortex cluster status``)

Every member's configuration is ``node_config``'s text; ``ops/cluster/n*.conf``
are the same text for the default ports (a test holds them equal). It holds
no secret: the route password and the routes that carry it live in
``auth/routes.conf``, included inside the ``cluster`` block. nats-server
routes take one user and password, which peers must give in clear in their
route URLs; without it a server cannot join (``tests/cluster``).

Ports are chosen before the start (a route port of ``-1`` cannot be given to
peers), and "Server is ready" comes before the cluster has a JetStream meta
leader: ``start`` returns once every member has seen one and answers
``$JS.API.INFO``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient

from cortex.errors import ServerError, Unavailable
from cortex.nats import connection
from cortex.nats.auth import AUTH_DIR, Credentials, LocalAuth
from cortex.nats.bus import Bus
from cortex.nats.errors import translated
from cortex.nats.permissions import Role
from cortex.nats.server import EmbeddedServer
from cortex.nats.stream_config import LiveCluster

log = structlog.get_logger(__name__)

CLUSTER_NAME: Final = "cortex"
DEFAULT_NODES: Final = 3
DEFAULT_CLIENT_PORT: Final = 4222
DEFAULT_ROUTE_PORT: Final = 6222
ROUTES_CONF: Final = "routes.conf"
CLUSTER_FILE: Final = "cluster.json"
CONFIG_FILE: Final = "nats-server.conf"
ROUTE_USER: Final = "route"
#: A member's log says it knows the meta leader (jetstream_cluster.go).
_META_LEADER: Final = ("JetStream cluster new metadata leader", "Self is new JetStream cluster")
_RELOADED: Final = "Reloaded server configuration"
_JS_INFO: Final = "$JS.API.INFO"
#: The throwaway stream ``placement_ready`` creates to see that every peer is online.
_PROBE: Final = "CORTEX_CLUSTER_PROBE"


def node_name(node: int) -> str:
    """The server name of member ``node`` (1-based): what Raft and stream info call it."""
    return f"{CLUSTER_NAME}-n{node}"


@dataclass(frozen=True, slots=True)
class Ports:
    """Each member's client and route port (member 1 first)."""

    client: tuple[int, ...]
    route: tuple[int, ...]

    @classmethod
    def default(
        cls,
        nodes: int = DEFAULT_NODES,
        *,
        client: int = DEFAULT_CLIENT_PORT,
        route: int = DEFAULT_ROUTE_PORT,
    ) -> Ports:
        """Consecutive ports from ``client`` and ``route`` (4222…, 6222… by default)."""
        return cls(tuple(client + i for i in range(nodes)), tuple(route + i for i in range(nodes)))

    @classmethod
    def free(cls, nodes: int = DEFAULT_NODES) -> Ports:
        """Ports free on 127.0.0.1 now (a small race remains until the servers bind them)."""
        found = _free_ports(2 * nodes)
        return cls(tuple(found[:nodes]), tuple(found[nodes:]))

    def url(self, node: int) -> str:
        return f"nats://127.0.0.1:{self.client[node - 1]}"


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_config(node: int, ports: Ports) -> str:
    """The configuration of member ``node``: what ``ops/cluster/n<node>.conf`` ships for
    the default ports. Paths are relative: the server runs in ``<data>/n<node>``."""
    return (
        f"# CORTEX cluster member {node} of {len(ports.client)}: written by `cortex cluster up`\n"
        "# (cortex/nats/cluster.py, node_config); ops/cluster/ ships it for the default ports.\n"
        f"# It runs in DATA/n{node}: the store and pid file are here, the users and the route\n"
        "# secret in DATA/auth (0700), the same for every member.\n"
        f"server_name: {node_name(node)}\n"
        f'listen: "127.0.0.1:{ports.client[node - 1]}"\n'
        "max_payload: 1MB\n"
        'pid_file: "nats.pid"\n'
        f'include "../{AUTH_DIR}/users.conf"\n'
        "\n"
        "jetstream {\n"
        '  store_dir: "store"\n'
        "  # Nothing is acknowledged before it is on disk (see nats.conf).\n"
        "  sync_interval: always\n"
        "  # Explicit: by default each server claims 75% of RAM and the whole disk.\n"
        "  max_memory_store: 256MB\n"
        "  max_file_store: 8GB\n"
        "}\n"
        "\n"
        "cluster {\n"
        f"  name: {CLUSTER_NAME}\n"
        f'  listen: "127.0.0.1:{ports.route[node - 1]}"\n'
        "  # The route user and password, and the routes to every member (which carry the\n"
        "  # password in clear, as nats-server wants it): a secret, so not in this file.\n"
        f'  include "../{AUTH_DIR}/{ROUTES_CONF}"\n'
        "}\n"
    )


def routes_config(ports: Ports, password: str) -> str:
    """``auth/routes.conf``: the one route user every member admits, and every member's
    route (a server ignores its own), for all members alike."""
    routes = ",\n".join(
        f'    "nats-route://{ROUTE_USER}:{password}@127.0.0.1:{port}"' for port in ports.route
    )
    return (
        "# Written by `cortex cluster up`: a secret (the route password), 0600.\n"
        f'authorization {{ user: {ROUTE_USER}, password: "{password}", timeout: 2 }}\n'
        f"routes: [\n{routes}\n]\n"
    )


def _write_private(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(partial, path)


class ClusterMember(EmbeddedServer):
    """One member of the cluster: ``node_config`` in ``<data>/n<node>``, the shared users."""

    #: What a member says while its peers start, stop or elect: expected, not warnings.
    quiet = (
        "Error trying to connect to route",
        "Waiting for routing to be established",
        "established contact with a meta leader",
        "Metalayer blocking snapshot",
        "Plaintext passwords detected",
        "Error flushing",
    )

    def __init__(
        self,
        data: Path,
        node: int,
        ports: Ports,
        *,
        auth: LocalAuth,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(data / f"n{node}", port=ports.client[node - 1], auth=auth, env=env)
        self.node = node
        self.name = node_name(node)
        self.ports = ports
        #: Set once the member's log says it knows the cluster's meta leader.
        self.meta_leader = asyncio.Event()
        #: Set each time the member's log says it re-read its configuration (SIGHUP:
        #: ``LocalAuth.reload``); clear it before signalling to wait for the next.
        self.reloaded = asyncio.Event()
        self._watched: list[tuple[str, asyncio.Event]] = []

    def _write_config(self) -> Path:
        self.auth.ensure()
        self.auth.write_config()
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        path = self.data_dir / CONFIG_FILE
        path.write_text(node_config(self.node, self.ports))
        return path

    async def start(self, *, timeout: float = 20.0) -> str:
        self.meta_leader.clear()
        return await super().start(timeout=timeout)

    def watch(self, text: str) -> asyncio.Event:
        """An event set when the member's log next says ``text`` (e.g. that a stream
        caught up, or has a new leader): something to wait on, bounded by the caller."""
        event = asyncio.Event()
        self._watched.append((text, event))
        return event

    def _saw(self, line: str) -> None:
        if any(text in line for text in _META_LEADER):
            self.meta_leader.set()
        elif _RELOADED in line:
            self.reloaded.set()
        for text, event in self._watched:
            if text in line:
                event.set()
        self._watched = [(t, e) for t, e in self._watched if not e.is_set()]


class ClusterServers:
    """N nats-servers forming one JetStream cluster on 127.0.0.1 (see the module doc).

    ``gomaxprocs``: the Go scheduler's threads per server (None: Go's default, one
    per core). Measured on 2 cores, idle: 1 changed neither the start (about 0.3-0.7 s
    either way) nor the stream's fail-over after kill -9 of its leader (4-9 s either
    way: Raft's election timeout), so the engine runs as shipped unless asked.
    """

    def __init__(
        self,
        data: Path,
        nodes: int = DEFAULT_NODES,
        *,
        ports: Ports | None = None,
        gomaxprocs: int | None = None,
    ) -> None:
        if nodes < 2:
            raise ValueError("a cluster needs at least two servers (one: `cortex up`)")
        self.data = data.resolve()
        self.ports = ports or Ports.default(nodes)
        if len(self.ports.client) != nodes or len(self.ports.route) != nodes:
            raise ValueError(f"{nodes} servers need {nodes} client and route ports")
        #: One set of users for every member: the same credentials work everywhere.
        self.auth = LocalAuth(self.data)
        env = {} if gomaxprocs is None else {"GOMAXPROCS": str(gomaxprocs)}
        self.members = [
            ClusterMember(self.data, n, self.ports, auth=self.auth, env=env)
            for n in range(1, nodes + 1)
        ]

    @property
    def urls(self) -> list[str]:
        """Every member's client URL, member 1 first."""
        return [self.ports.url(m.node) for m in self.members]

    def member(self, node: int) -> ClusterMember:
        return self.members[node - 1]

    def admin(self) -> Credentials:
        return self.auth.credentials(Role.ADMIN)

    def _prepare(self) -> None:
        self.auth.ensure()
        password = self.auth.route_password()
        _write_private(self.auth.folder / ROUTES_CONF, routes_config(self.ports, password))
        doc = {
            "cluster": CLUSTER_NAME,
            "nodes": [
                {"node": m.node, "name": m.name, "url": self.ports.url(m.node)}
                for m in self.members
            ],
        }
        (self.data / CLUSTER_FILE).write_text(json.dumps(doc, indent=2) + "\n")

    async def start(self, *, timeout: float = 60.0) -> list[str]:
        """Start every member and return their URLs once JetStream answers on each."""
        started = time.monotonic()
        phases: dict[str, float] = {}
        self._prepare()
        try:
            async with asyncio.timeout(timeout):
                async with asyncio.TaskGroup() as group:
                    for m in self.members:
                        group.create_task(m.start(timeout=timeout))
                phases["servers"] = time.monotonic() - started
                await self.wait_jetstream()
                phases["jetstream"] = time.monotonic() - started
                await self.wait_placement()
        except BaseException as e:
            await self.close()
            if isinstance(e, TimeoutError):
                raise ServerError(
                    f"the {len(self.members)} nats-servers did not form a JetStream cluster "
                    f"within {timeout:g}s"
                ) from e
            if isinstance(e, ExceptionGroup):
                raise e.exceptions[0] from e
            raise
        log.info(
            "cluster_ready",
            servers=len(self.members),
            seconds=round(time.monotonic() - started, 3),
            **{f"{name}_s": round(t, 3) for name, t in phases.items()},
            urls=self.urls,
        )
        return self.urls

    async def wait_jetstream(self, nodes: list[int] | None = None) -> None:
        """Until each running member (or those in ``nodes``) knows a meta leader and
        answers JetStream requests (bound it with ``asyncio.timeout``)."""
        chosen = [self.member(n) for n in nodes] if nodes else self.members
        running = [m for m in chosen if m.pid is not None]
        for m in running:
            await m.meta_leader.wait()
        admin = self.admin()
        for m in running:
            await jetstream_ready(self.ports.url(m.node), admin)

    async def wait_placement(self) -> None:
        """Until the meta leader can place a stream on every member (it learns that a
        peer is online a moment after the peer knows the leader): a throwaway
        in-memory stream with one replica per member is created, then deleted."""
        await placement_ready(self.urls[0], self.admin(), len(self.members))

    async def wait_current(self, *, pause: float = 0.1) -> LiveCluster:
        """Until the ledger stream has a leader and every running member is it or a
        current follower (bound it with ``asyncio.timeout``). The server announces no
        such moment, so this asks, with ``pause`` between the questions."""
        running = {m.name for m in self.members if m.pid is not None}
        admin = self.admin()
        while True:
            url = next(self.ports.url(m.node) for m in self.members if m.pid is not None)
            try:
                placed = await stream_cluster(url, admin, timeout=2.0)
            except Unavailable:
                placed = None
            if placed is not None and placed.leader:
                followers = placed.replicas or []
                current = {r.name for r in followers if r.current} | {placed.leader}
                if running <= current:
                    return placed
            await asyncio.sleep(pause)

    async def stop(self, node: int) -> None:
        """Stop member ``node`` gracefully (SIGTERM: it hands its Raft leaderships over)."""
        await self.member(node).stop()

    async def kill(self, node: int) -> None:
        """Kill member ``node`` (SIGKILL: a crash, nothing handed over)."""
        await self.member(node).stop(kill=True)

    async def restart(self, node: int, *, timeout: float = 30.0) -> None:
        """Start member ``node`` again (after ``stop`` or ``kill``) and wait until it
        takes part in JetStream."""
        member = self.member(node)
        if member.pid is not None:
            await member.stop()
        async with asyncio.timeout(timeout):
            await member.start(timeout=timeout)
            await self.wait_jetstream([node])

    async def close(self) -> None:
        """Stop every member (all at once: none waits out another's election)."""
        async with asyncio.TaskGroup() as group:
            for m in self.members:
                group.create_task(m.stop())

    async def __aenter__(self) -> ClusterServers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# -- asking the cluster -------------------------------------------------------


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Reply(msgspec.Struct):
    error: _ApiError | None = None


async def _request(
    url: str, creds: Credentials, subject: str, *, timeout: float, payload: bytes = b""
) -> bytes:
    nc = await connection.connect(url, name="cortex-cluster", timeout=timeout, creds=creds)
    try:
        with translated("request", subject=subject, timeout=timeout):
            msg = await nc.request(subject, payload, timeout=timeout)
        return bytes(msg.data)
    finally:
        await connection.close(nc)


async def _retry_until_ok(
    url: str, creds: Credentials, subject: str, payload: bytes, *, attempts: int
) -> None:
    """Send until the JetStream API answers without an error. A cluster without a meta
    leader answers 503 or not at all, one that has not yet heard from a peer says
    "peer offline": each such answer is retried after a short, growing pause (a
    retry policy, not a wait for a condition: the caller bounds it in time)."""
    pause = 0.05
    last = ""
    for _ in range(attempts):
        try:
            raw = await _request(url, creds, subject, timeout=2.0, payload=payload)
            reply = msgspec.json.decode(raw, type=_Reply)
        except Unavailable as e:
            reply, last = _Reply(_ApiError(503, 0, "no answer")), e.message
        if reply.error is None:
            return
        last = last or f"{reply.error.description} ({reply.error.err_code})"
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)
    raise Unavailable(f"JetStream at {url} did not answer {subject}: {last}")


async def jetstream_ready(url: str, creds: Credentials, *, attempts: int = 50) -> None:
    """Until the server at ``url`` answers ``$JS.API.INFO`` (its account) without an error."""
    await _retry_until_ok(url, creds, _JS_INFO, b"", attempts=attempts)


async def placement_ready(
    url: str, creds: Credentials, replicas: int, *, attempts: int = 50
) -> None:
    """Until JetStream can place a stream with ``replicas`` copies: a throwaway one is
    created (in memory, no subjects anyone uses) and deleted again."""
    config = {
        "name": _PROBE,
        "subjects": [f"_cortex.probe.{os.getpid()}"],
        "storage": "memory",
        "num_replicas": replicas,
        "max_msgs": 1,
    }
    create = f"$JS.API.STREAM.CREATE.{_PROBE}"
    await _retry_until_ok(url, creds, create, json.dumps(config).encode(), attempts=attempts)
    await _retry_until_ok(url, creds, f"$JS.API.STREAM.DELETE.{_PROBE}", b"", attempts=attempts)


async def stream_cluster(
    url: str, creds: Credentials, *, timeout: float = 5.0
) -> LiveCluster | None:
    """The ledger stream's leader and followers, asked of the server at ``url`` (None
    when there is no such stream; Unavailable while the cluster cannot say)."""
    bus = await Bus.connect(url, name="cortex-cluster", creds=creds, timeout=timeout)
    try:
        status = await bus.stream_status()
    finally:
        await bus.close()
    if status is None:
        return None
    return status.cluster or LiveCluster()


async def admits(url: str, creds: Credentials | None = None, *, timeout: float = 2.0) -> bool:
    """Whether the server at ``url`` lets ``creds`` (None: nobody) connect.

    One attempt at that server alone. (``connection.connect`` keeps retrying a
    refused identity against a cluster: every refusal's INFO puts the members it
    lists back into nats-py's server pool, so its attempts never run out.)
    """
    nc = NatsClient()

    async def quiet(_e: Exception) -> None:
        return None

    options: dict[str, Any] = {
        "connect_timeout": timeout,
        "allow_reconnect": False,
        "max_reconnect_attempts": 0,
        "error_cb": quiet,
    }
    if creds is not None:
        options["nkeys_seed_str"] = creds.seed
        options["inbox_prefix"] = creds.inbox_prefix
    try:
        await nc.connect(url, name="cortex-cluster-check", **options)
    except nats.errors.Error as e:
        if "authorization" in str(e).lower():
            return False
        raise Unavailable(f"cannot reach NATS at {url}: {e}") from e
    except (OSError, TimeoutError) as e:
        raise Unavailable(f"cannot reach NATS at {url}: {e}") from e
    finally:
        await _close_refused(nc)
    return True


async def _close_refused(nc: NatsClient) -> None:
    """Close a connection, also one the server refused (its socket is still open then)."""
    await connection.close(nc)
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()
            await transport.wait_closed()


def read_cluster_file(data: Path) -> list[tuple[int, str, str]]:
    """(node, server name, client URL) of each member ``cortex cluster up`` started in
    ``data``; empty when it never ran there."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads((data / CLUSTER_FILE).read_text())
        return [(int(n["node"]), str(n["name"]), str(n["url"])) for n in doc["nodes"]]
    return []
