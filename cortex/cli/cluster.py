"""``cortex cluster up`` and ``cortex cluster status``: CORTEX on a three-server JetStream
cluster on this machine.

``up`` starts N nats-servers (``cortex.nats.cluster.ClusterServers``) and beside
each a CORTEX node: its projector and queries, reading into its own SQLite
(``DATA/nN/projection.db``), connected to its own server. The ledger stream is
created with one replica per server (at most 5, JetStream's limit), and a
writer candidate runs on every node (``node_roles``): the writer lease
(``cortex.lease``) makes one of them active. Every candidate signs with the
same key (``--key``), so a hand-over never adds a writer key to the ledger.
SIGTERM or Ctrl-C stops the standing-by candidates, then the active writer
(it drains and releases the lease), then the nodes, then the servers.

``status`` asks the servers of ``DATA`` (``cluster.json``) as the folder's
admin: which are up, which leads the stream and how far behind each follower
is, each node's projector position and lag (asked of each node by name, live),
and which writer is active (live, from the lease key: node, server, since).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.markup import escape
from rich.table import Table

from cortex import served
from cortex.cli.output import EXIT_FAILED, EXIT_OK, err, out, print_json
from cortex.core.keys import WriterKey, default_key_path, writer_key_at
from cortex.datalock import DataLock
from cortex.errors import CortexError
from cortex.lease import current_holder
from cortex.nats import Bus, Credentials, LocalAuth, Role
from cortex.nats.cluster import (
    CLUSTER_FILE,
    DEFAULT_CLIENT_PORT,
    DEFAULT_NODES,
    DEFAULT_ROUTE_PORT,
    ClusterServers,
    Ports,
    node_name,
    read_cluster_file,
    stream_cluster,
)
from cortex.nats.stream_config import LiveCluster
from cortex.node import status_subject
from cortex.runtime import Runtime
from events.model import SYSTEM_TENANT
from projections.tasks import stop_task

DEFAULT_DATA: Final = ".cortex-cluster"
#: JetStream keeps at most five copies of a stream.
MAX_REPLICAS: Final = 5
PROJECTION_DB: Final = "projection.db"
#: The tenant token ``status`` asks each node under (``status`` reads no tenant's data).
STATUS_TENANT: Final = SYSTEM_TENANT


@dataclass(frozen=True, slots=True)
class NodeRoles:
    """What runs beside one server."""

    node: int
    writer: bool
    projector: bool = True


def node_roles(node: int, nodes: int) -> NodeRoles:
    """The roles of node ``node`` of ``nodes``: a writer candidate on every node (the
    writer lease picks the one that appends), a projector and queries on each."""
    return NodeRoles(node=node, writer=True)


def _data(args: argparse.Namespace) -> Path:
    return Path(args.data or DEFAULT_DATA).resolve()


def _ports(args: argparse.Namespace) -> Ports:
    if args.port == -1:
        return Ports.free(args.nodes)
    return Ports.default(args.nodes, client=args.port, route=args.route_port)


def _key(args: argparse.Namespace, data: Path) -> WriterKey:
    """The one writer key every node's writer signs with: ``--key``, else the one kept
    for this folder in the user's configuration folder (never in the data folder)."""
    return writer_key_at(Path(args.key) if args.key else default_key_path(data))


async def cmd_up(args: argparse.Namespace) -> int:
    """Run the servers, a node beside each, and the writer until SIGINT/SIGTERM."""
    data = _data(args)
    nodes: int = args.nodes
    lock = DataLock(data, purpose=f"cortex cluster up --nodes {nodes}").acquire()
    try:
        return await _up(args, data, nodes)
    finally:
        lock.release()


async def _up(args: argparse.Namespace, data: Path, nodes: int) -> int:
    key = _key(args, data)
    servers = ClusterServers(data, nodes, ports=_ports(args), gomaxprocs=args.gomaxprocs or None)
    replicas = min(nodes, MAX_REPLICAS)
    roles = [node_roles(n, nodes) for n in range(1, nodes + 1)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Left in reverse order: the writers first, then the nodes, then the servers.
    async with contextlib.AsyncExitStack() as stack:
        await servers.start()
        stack.push_async_callback(servers.close)
        admin = servers.admin()
        bus = await Bus.connect(servers.urls[0], name="cortex-cluster-admin", creds=admin)
        try:
            await bus.ensure_stream(replicas=replicas)
        finally:
            await bus.close()
        runtimes: list[Runtime] = []
        for role in roles:
            if role.projector:
                rt = await stack.enter_async_context(
                    Runtime(
                        servers.ports.url(role.node),
                        name=node_name(role.node),
                        creds=servers.auth.credentials(Role.NODE),
                    )
                )
                await rt.add_node(data / f"n{role.node}" / PROJECTION_DB, name=node_name(role.node))
                runtimes.append(rt)
        candidates: list[Runtime] = []
        stack.push_async_callback(_stop_writers, candidates)
        for role in roles:
            if role.writer:
                rt = Runtime(
                    servers.ports.url(role.node),
                    name=node_name(role.node),
                    creds=servers.auth.credentials(Role.WRITER),
                )
                candidates.append(rt)
                await rt.add_writer(candidate=True, key=key, replicas=replicas)
                runtimes.append(rt)
        writers = [role.node for role in roles if role.writer]
        served.announce(data, servers.urls[0])
        stack.callback(served.withdraw, data)
        out.print(
            f"CORTEX cluster is up: serving {','.join(servers.urls)} ({nodes} servers, "
            f"{CLUSTER_FILE} in {data}; ledger R{replicas}; writer candidates on "
            f"{', '.join(f'n{n}' for n in writers)}, one active). Ctrl-C to stop."
        )
        out.print(
            f"no anonymous access: commands run here use {servers.auth.path(Role.ADMIN)}; "
            f"issue agents theirs with `cortex tenant add TENANT --data {data}`"
        )
        out.print(
            f"checkpoints are signed by {escape(key.verifier)} "
            "(give it to auditors: cortex audit --writer-key …)"
        )
        await _wait(runtimes, stop)
        out.print("stopping…")
    return EXIT_OK


async def _stop_writers(candidates: list[Runtime]) -> None:
    """Stop the standing-by candidates first, then the active writer: it drains and
    releases the lease with nobody left to take it, instead of handing over to each
    candidate in turn on the way down."""
    active = [rt for rt in candidates if rt.writer is not None and rt.writer.active.is_set()]
    for rt in [rt for rt in candidates if rt not in active] + active:
        await rt.close()


async def _wait(runtimes: list[Runtime], stop: asyncio.Event) -> None:
    """Until ``stop`` is set, or any part fails for good (then its error is raised)."""
    waits = [asyncio.create_task(rt.wait(stop)) for rt in runtimes]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in waits:
            await stop_task(task)


# -- status -----------------------------------------------------------------


async def _server_status(url: str, admin: Credentials) -> dict[str, Any]:
    """Whether the server at ``url`` is up, and where the ledger ends as it sees it."""
    try:
        bus = await Bus.connect(url, name="cortex-cluster-status", creds=admin, timeout=2.0)
    except CortexError as e:
        return {"up": False, "error": e.message}
    try:
        result: dict[str, Any] = {"up": True}
        try:
            result["ledger_last_seq"] = await bus.last_seq()
        except CortexError as e:
            result["ledger_error"] = e.message
        return result
    finally:
        await bus.close()


async def _node_status(bus: Bus, node: int) -> dict[str, Any] | None:
    """What node ``node``'s projector says of itself, asked by name over NATS
    (``cortex.node.status_subject``); None if it does not answer."""
    try:
        reply = json.loads(
            await bus.request(status_subject(STATUS_TENANT, node_name(node)), b"{}", timeout=2.0)
        )
    except (CortexError, ValueError):
        return None
    result = reply.get("result") if isinstance(reply, dict) else None
    return result if isinstance(result, dict) else None


async def _writer(bus: Bus) -> dict[str, Any] | None:
    """The active writer, live from the lease key: its node, server and since when."""
    holder = await current_holder(bus)
    if holder is None:
        return None
    return {
        "node": holder.name,
        "server": holder.server,
        "since": holder.since,
        "candidate": holder.holder,
    }


async def _live(
    urls: list[str], nodes: list[int], admin: Credentials
) -> tuple[list[dict[str, Any] | None], dict[str, Any] | None, str]:
    """Through any server up: each node's own status, the active writer (or why not)."""
    if not urls:
        return [None] * len(nodes), None, "no server is up"
    bus = await Bus.connect(urls, name="cortex-cluster-status", creds=admin, timeout=2.0)
    try:
        statuses = list(await asyncio.gather(*(_node_status(bus, n) for n in nodes)))
        try:
            return statuses, await _writer(bus), ""
        except CortexError as e:
            return statuses, None, e.message
    finally:
        await bus.close()


async def cmd_status(args: argparse.Namespace) -> int:
    data = _data(args)
    members = read_cluster_file(data)
    if not members:
        raise CortexError(
            f"no cluster in {data}: start one with `cortex cluster up --data {data}`",
            code="not_found",
        )
    admin = LocalAuth(data).credentials(Role.ADMIN)
    rows = await asyncio.gather(*(_server_status(url, admin) for _, _, url in members))
    stream: LiveCluster | None = None
    stream_error = ""
    for (_, _, url), row in zip(members, rows, strict=True):
        if row["up"]:
            try:
                stream = await stream_cluster(url, admin)
                break
            except CortexError as e:
                stream_error = e.message
    last = max((r.get("ledger_last_seq", 0) for r in rows), default=0)
    up = [url for (_, _, url), row in zip(members, rows, strict=True) if row["up"]]
    nodes, writer, writer_error = await _live(up, [n for n, _, _ in members], admin)
    report: dict[str, Any] = {
        "servers": [],
        "stream": None
        if stream is None
        else {
            "leader": stream.leader or "",
            "replicas": [
                {"name": r.name, "current": r.current, "offline": r.offline, "lag": r.lag}
                for r in stream.replicas or []
            ],
        },
        "ledger_last_seq": last,
        "writer": writer,
    }
    if writer_error:
        report["writer_error"] = writer_error
    if stream_error and stream is None:
        report["stream_error"] = stream_error
    for (node, name, url), row, status in zip(members, rows, nodes, strict=True):
        entry: dict[str, Any] = {"node": node, "name": name, "url": url, "up": row["up"]}
        entry["projector"] = (
            None
            if status is None
            else {
                "seq": status["seq"],
                "lag": max(0, last - status["seq"]),
                "following": status.get("following", True),
            }
        )
        if not row["up"]:
            entry["error"] = row.get("error", "")
        report["servers"].append(entry)
    if args.json:
        print_json(report)
    else:
        _print_status(report)
    healthy = all(s["up"] for s in report["servers"]) and stream is not None
    return EXIT_OK if healthy else EXIT_FAILED


def _print_status(report: dict[str, Any]) -> None:
    stream = report["stream"]
    writer = report["writer"]
    leader = stream["leader"] if stream else ""
    table = Table(title="cortex cluster")
    for column in ("server", "url", "state", "stream", "projector", "writer"):
        table.add_column(column)
    replicas = {r["name"]: r for r in stream["replicas"]} if stream else {}
    for s in report["servers"]:
        if s["name"] == leader:
            role = "leader"
        elif s["name"] in replicas:
            r = replicas[s["name"]]
            role = "replica, " + ("current" if r["current"] else f"behind by {r['lag']}")
        else:
            role = "-"
        p = s.get("projector")
        projector = f"seq {p['seq']}, lag {p['lag']}" if p else "no answer"
        if p and not p["following"]:
            projector += " [red](not following)[/]"
        active = writer is not None and writer["node"] == node_name(s["node"])
        table.add_row(
            s["name"],
            s["url"],
            "up" if s["up"] else "[red]down[/]",
            role,
            projector,
            "active" if active else "standby",
        )
    out.print(table)
    out.print(f"ledger ends at seq {report['ledger_last_seq']}")
    if writer is None:
        err.print("[red]no active writer[/]: " + escape(report.get("writer_error", "no lease")))
    else:
        since = dt.datetime.fromtimestamp(writer["since"], dt.UTC).isoformat(timespec="seconds")
        out.print(
            f"active writer: {escape(writer['node'])} (connected to {escape(writer['server'])}), "
            f"since {since}"
        )
    if stream is None:
        err.print(
            "[red]no stream leader[/]: " + escape(report.get("stream_error", "no CORTEX_LEDGER"))
        )


# -- the parser -------------------------------------------------------------


def register(sub: Any) -> None:
    """Add ``cortex cluster up`` and ``cortex cluster status``."""
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", help="log what happens to stderr")
    verbose.add_argument(
        "--data", help=f"the cluster's folder: auth/, n1/, n2/… (default ./{DEFAULT_DATA})"
    )
    cluster = sub.add_parser(
        "cluster", help="run CORTEX on a JetStream cluster on this machine"
    ).add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = cluster.add_parser(
        "up", parents=[verbose], help="start the servers, a node beside each, and the writer"
    )
    p.add_argument(
        "--nodes",
        type=int,
        choices=range(2, 10),
        default=DEFAULT_NODES,
        metavar="N",
        help=f"servers (and nodes) to run, 2-9 (default {DEFAULT_NODES}; one: `cortex up`)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_CLIENT_PORT,
        help=f"client port of server 1; the others follow (default {DEFAULT_CLIENT_PORT}); "
        "-1: free ports, routes included",
    )
    p.add_argument(
        "--route-port",
        type=int,
        default=DEFAULT_ROUTE_PORT,
        help=f"route port of server 1; the others follow (default {DEFAULT_ROUTE_PORT})",
    )
    p.add_argument(
        "--key",
        metavar="PATH",
        help="the writer's signing key, the same on every node (created 0600 if missing); "
        "default: in the user's configuration folder, never in the data folder",
    )
    p.add_argument(
        "--gomaxprocs",
        type=int,
        default=0,
        metavar="N",
        help="GOMAXPROCS of each nats-server (default 0: Go's own, one per core)",
    )
    p.set_defaults(func=cmd_up)
    p = cluster.add_parser(
        "status",
        parents=[verbose],
        help="servers, stream leader and replicas, projector positions, active writer",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
