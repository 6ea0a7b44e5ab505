"""The shipped cluster configurations are what `cortex cluster up` writes, and hold no secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.nats.cluster import ROUTES_CONF, Ports, node_config, routes_config

OPS = Path(__file__).resolve().parents[2] / "ops" / "cluster"


@pytest.mark.parametrize("node", [1, 2, 3])
def test_shipped_configs_are_the_generated_ones(node: int) -> None:
    """ops/cluster/nN.conf cannot drift from node_config (see ops/cluster/README.md)."""
    assert (OPS / f"n{node}.conf").read_text() == node_config(node, Ports.default(3))


def test_member_config_is_loopback_authenticated_and_durable() -> None:
    text = node_config(2, Ports.default(3))
    assert "server_name: cortex-n2" in text
    assert 'listen: "127.0.0.1:4223"' in text
    assert 'listen: "127.0.0.1:6223"' in text
    assert "sync_interval: always" in text
    assert 'include "../auth/users.conf"' in text
    assert f'include "../auth/{ROUTES_CONF}"' in text
    assert "0.0.0.0" not in text  # noqa: S104 - checking it is absent
    assert "password:" not in text  # the secret is in auth/routes.conf
    assert "nats-route://" not in text


def test_routes_carry_the_password_to_every_member() -> None:
    text = routes_config(Ports.default(3), "s3cret")
    assert 'authorization { user: route, password: "s3cret", timeout: 2 }' in text
    for port in (6222, 6223, 6224):
        assert f"nats-route://route:s3cret@127.0.0.1:{port}" in text
