"""What a user trips on first: usage errors, help, the version, and which id is which."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from cortex.nats import EmbeddedServer
from cortex.testing import run_cli, running_node
from cortex.writer import LedgerWriter


async def test_a_missing_option_is_one_usage_line_and_exit_1() -> None:
    """The README promises exit 1 for anything refused; argparse's own exit was 2."""
    run = await run_cli("fact", "add", "Water boils", "--json")
    assert run.code == 1
    assert run.err.startswith("error [usage]: ")
    assert "--agent" in run.err
    assert run.json() == {"error": {"code": "usage", "message": run.json()["error"]["message"]}}
    bad = await run_cli("log", "--bogus")
    assert bad.code == 1
    assert "error [usage]" in bad.err


async def test_no_arguments_print_help_and_version_prints_the_version() -> None:
    bare = await run_cli()
    assert bare.code == 0
    assert "COMMAND" in bare.out
    assert "audit" in bare.out
    version = await run_cli("--version")
    assert version.code == 0
    assert re.fullmatch(r"cortex \d+\.\d+\.\d+\S*\n", version.out)


async def test_up_and_demo_help_list_only_options_that_do_something_there() -> None:
    for command in ("up", "demo"):
        run = await run_cli(command, "--help")
        assert run.code == 0
        assert "--tenant" not in run.out, command
    assert "--json" not in (await run_cli("up", "--help")).out


async def test_fact_add_prints_the_fact_id_as_the_id_and_the_event_id_as_the_receipt(
    server: EmbeddedServer, writer: LedgerWriter
) -> None:
    url = ("--nats", server.url)
    assert (await run_cli("agent", "add", "ada", *url)).code == 0
    human = await run_cli("fact", "add", "Water boils", "--agent", "ada", *url)
    assert human.code == 0, human.err
    first, second = human.out.splitlines()[:2]
    fact_id = first.removeprefix("fact ")
    uuid.UUID(fact_id)
    assert second.startswith("receipt: seq 2, hash ")
    assert fact_id not in second
    voted = await run_cli("vote", fact_id, "+1", "--agent", "ada", *url)  # it is the id to use
    assert voted.code == 0, voted.err

    stored = await run_cli("fact", "add", "Ice melts", "--agent", "ada", "--json", *url)
    receipt = stored.json()
    assert set(receipt) == {"fact_id", "seq", "hash", "event_id"}
    assert receipt["fact_id"] != receipt["event_id"]


async def test_facts_say_more_exist_and_the_cursor_pages_on(
    server: EmbeddedServer, writer: LedgerWriter, tmp_path: Path
) -> None:
    url = ("--nats", server.url)
    assert (await run_cli("agent", "add", "ada", *url)).code == 0
    for n in range(3):
        assert (await run_cli("fact", "add", f"water {n}", "--agent", "ada", *url)).code == 0
    async with running_node(server.url, tmp_path / "node.db"):
        human = await run_cli("facts", "--limit", "2", "--min-seq", "4", *url)
        assert human.code == 0, human.err
        assert "more follow: add --cursor " in human.out
        first = (await run_cli("facts", "--limit", "2", "--json", *url)).json()
        assert len(first["items"]) == 2
        rest = await run_cli(
            "facts", "--limit", "2", "--cursor", first["next_cursor"], "--json", *url
        )
        assert [f["content"] for f in rest.json()["items"]] == ["water 0"]
        assert rest.json()["next_cursor"] is None
        hits = (await run_cli("search", "water", "--limit", "1", "--json", *url)).json()
        assert len(hits["items"]) == 1
        assert hits["next_cursor"]
