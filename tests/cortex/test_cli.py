"""The `cortex` command as a user runs it: a real process, real exit codes, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Forge

from cortex.nats import Bus, EmbeddedServer, ledger_subject
from cortex.testing import run_cli as cortex
from cortex.testing import running_node
from cortex.writer import LedgerWriter


async def test_demo_runs_the_story_and_the_audit_passes() -> None:
    run = await cortex("demo")
    assert run.code == 0, run.err
    assert "intact" in run.out
    assert "vote_cast" in run.out
    assert "fact_deprecated" in run.out
    assert "Traceback" not in run.err


async def test_demo_json_is_one_object_with_events_and_audit() -> None:
    run = await cortex("demo", "--json")
    assert run.code == 0, run.err
    result = run.json()
    assert result["audit"]["ok"] is True
    assert [e["seq"] for e in result["events"]] == list(range(1, result["audit"]["events"] + 1))


async def test_a_session_of_writes_reads_and_an_audit(
    server: EmbeddedServer, writer: LedgerWriter
) -> None:
    """agent add → fact add → vote → log → audit, each as its own process."""
    url = ("--nats", server.url, "--tenant", "lab")
    assert (await cortex("agent", "add", "ada", *url)).code == 0
    stored = await cortex(
        "fact",
        "add",
        "Light is a wave",
        "--agent",
        "ada",
        "--tag",
        "physics",
        "--meta",
        '{"lab": 1}',
        "--valid-from",
        "2025-01-01T00:00:00+00:00",
        "--json",
        *url,
    )
    assert stored.code == 0, stored.err
    fact = stored.json()
    assert fact["seq"] == 2
    voted = await cortex("vote", fact["fact_id"], "-1", "--agent", "ada", "--json", *url)
    assert voted.code == 0, voted.err
    assert voted.json()["seq"] == 3

    log = await cortex("log", "--json", *url)
    rows = [json.loads(line) for line in log.out.splitlines()]
    assert [(r["seq"], r["kind"]) for r in rows] == [
        (1, "agent_registered"),
        (2, "fact_stored"),
        (3, "vote_cast"),
    ]
    assert rows[1]["hash"] == fact["hash"]
    assert rows[1]["event"]["meta"] == {"lab": 1}
    human = await cortex("log", *url)
    assert "fact_stored" in human.out
    assert "ada" in human.out

    audit = await cortex("audit", *url)
    assert audit.code == 0
    assert "intact" in audit.out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("vote", "00000000-0000-0000-0000-000000000000", "+1", "--agent", "ada"), "unknown_agent"),
        (("vote", "00000000-0000-0000-0000-000000000000", "5", "--agent", "ada"), "invalid_vote"),
        (("vote", "not-a-uuid", "+1", "--agent", "ada"), "is not a UUID"),
        (("fact", "add", "x", "--agent", "ada", "--meta", "[1]"), "JSON object"),
        (("fact", "add", "x", "--agent", "ada", "--confidence", "7"), "at most 1.0"),
    ],
)
async def test_refused_commands_print_why_and_exit_non_zero(
    server: EmbeddedServer, writer: LedgerWriter, bus: Bus, args: tuple[str, ...], says: str
) -> None:
    run = await cortex(*args, "--nats", server.url)
    assert run.code == 1
    assert says in run.err
    assert "Traceback" not in run.err
    assert await bus.last_seq() == 0


async def test_no_server_is_a_clear_error() -> None:
    run = await cortex("log", "--nats", "nats://127.0.0.1:9")
    assert run.code == 1
    assert "cannot reach NATS" in run.err
    assert "Traceback" not in run.err


async def test_no_writer_is_a_clear_error(server: EmbeddedServer) -> None:
    run = await cortex("agent", "add", "x", "--nats", server.url)
    assert run.code == 1
    assert "no CORTEX writer" in run.err


async def test_audit_names_forged_and_altered_events(
    server: EmbeddedServer, writer: LedgerWriter, bus: Bus, forge: Forge
) -> None:
    """Events appended around the writer are caught: a forged link and an altered body."""
    setup = await cortex("agent", "add", "ada", "--nats", server.url)
    assert setup.code == 0
    first = await bus.get(1)
    # Republish event 1 at the end, as if replayed: it links to genesis, not to the head.
    await forge(
        first.subject,
        first.body,
        {"Cortex-Prev": first.prev_hash.hex(), "Cortex-Hash": first.hash.hex()},
    )
    # An event whose recorded hash does not match its bytes.
    await forge(
        ledger_subject("default", "agent_registered"),
        first.body.replace(b"ada", b"eve"),
        {"Cortex-Prev": first.hash.hex(), "Cortex-Hash": first.hash.hex()},
    )
    run = await cortex("audit", "--json", "--nats", server.url)
    assert run.code == 1
    found = {(v["type"], v["seq"]) for v in run.json()["violations"]}
    assert ("chain_break", 2) in found
    assert ("duplicate_event", 2) in found
    assert ("hash_mismatch", 3) in found
    human = await cortex("audit", "--nats", server.url)
    assert human.code == 1
    assert "chain_break at seq 2" in human.out


async def test_reads_with_min_seq_see_the_write_before_them(
    server: EmbeddedServer, writer: LedgerWriter, tmp_path: Path
) -> None:
    """A write's seq given as --min-seq: every read that asks a node waits for it, then shows it."""
    url = ("--nats", server.url, "--tenant", "lab")
    async with running_node(server.url, tmp_path / "node.db"):
        assert (await cortex("agent", "add", "ada", *url)).code == 0
        stored = await cortex("fact", "add", "Light bends", "--agent", "ada", "--json", *url)
        assert stored.code == 0, stored.err
        seq, fact = str(stored.json()["seq"]), stored.json()["fact_id"]

        facts = await cortex("facts", "--min-seq", seq, "--json", *url)
        assert facts.code == 0, facts.err
        assert [f["fact_id"] for f in facts.json()["items"]] == [fact]
        hits = await cortex("search", "bends", "--min-seq", seq, "--json", *url)
        assert [f["fact_id"] for f in hits.json()["items"]] == [fact]
        shown = await cortex("show", fact, "--min-seq", seq, *url)
        assert shown.code == 0, shown.err
        assert "Light bends" in shown.out
        agents = await cortex("agents", "--min-seq", seq, "--json", *url)
        assert [a["agent_id"] for a in agents.json()["items"]] == ["ada"]
        status = await cortex("status", "--min-seq", seq, "--json", *url)
        assert status.json()["seq"] >= int(seq)
        digest = await cortex("digest", "--min-seq", seq, "--json", *url)
        assert digest.json()["seq"] >= int(seq)


async def test_an_unreachable_min_seq_is_a_timeout_error(
    server: EmbeddedServer, writer: LedgerWriter, tmp_path: Path
) -> None:
    """A seq the ledger never reaches: after the wait, one line with the code, exit 1."""
    async with running_node(server.url, tmp_path / "node.db"):
        run = await cortex("agents", "--min-seq", "1000000", "--json", "--nats", server.url)
    assert run.code == 1
    assert run.json()["error"]["code"] == "timeout"
    assert "error [timeout]: " in run.err
    assert "min_seq 1000000 was not reached" in run.err
    assert "Traceback" not in run.err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("facts", "--min-seq", "0"), "is not a positive whole number"),
        (("digest", "--db", "x.db", "--min-seq", "3"), "error [invalid_field]: --min-seq waits"),
    ],
)
async def test_a_min_seq_that_cannot_apply_is_refused(args: tuple[str, ...], says: str) -> None:
    run = await cortex(*args)
    assert run.code != 0
    assert says in run.err
    assert "Traceback" not in run.err


async def test_search_finds_the_readmes_example_and_says_when_nothing_matches(
    server: EmbeddedServer, writer: LedgerWriter, tmp_path: Path
) -> None:
    url = ("--nats", server.url, "--tenant", "lab")
    async with running_node(server.url, tmp_path / "node.db"):
        assert (await cortex("agent", "add", "ada", *url)).code == 0
        stored = await cortex(
            "fact", "add", "Water boils at 100 °C", "--agent", "ada", "--json", *url
        )
        seq = str(stored.json()["seq"])
        found = await cortex("search", "boiling water", "--min-seq", seq, *url)
        assert found.code == 0, found.err
        assert "boils" in found.out
        empty = await cortex("search", "photosynthesis", *url)
        assert empty.code == 0, empty.err
        assert "nothing matches" in empty.out


async def test_show_and_search_as_of_a_seq_show_the_ledger_as_it_stood(
    server: EmbeddedServer, writer: LedgerWriter, tmp_path: Path
) -> None:
    url = ("--nats", server.url, "--tenant", "lab")
    async with running_node(server.url, tmp_path / "node.db"):
        assert (await cortex("agent", "add", "ada", *url)).code == 0
        stored = await cortex("fact", "add", "Pluto is a planet", "--agent", "ada", "--json", *url)
        fact, then = stored.json()["fact_id"], str(stored.json()["seq"])
        gone = await cortex(
            "fact", "deprecate", fact, "--agent", "ada", "--reason", "IAU", "--json", *url
        )
        now = str(gone.json()["seq"])
        shown_now = await cortex("show", fact, "--min-seq", now, *url)
        assert "deprecated at seq" in shown_now.out
        shown_then = await cortex("show", fact, "--as-of", then, *url)
        assert shown_then.code == 0, shown_then.err
        assert "deprecated at seq" not in shown_then.out
        assert "fact_deprecated" not in shown_then.out
        hits_then = await cortex("search", "pluto", "--as-of", then, "--json", *url)
        assert [h["fact_id"] for h in hits_then.json()["items"]] == [fact]
        assert (await cortex("search", "pluto", "--json", *url)).json()["items"] == []


async def test_fact_edit_replaces_a_fact_in_one_append(
    server: EmbeddedServer, writer: LedgerWriter, tmp_path: Path
) -> None:
    url = ("--nats", server.url, "--tenant", "lab")
    async with running_node(server.url, tmp_path / "node.db"):
        for agent in ("ada", "bo"):
            assert (await cortex("agent", "add", agent, *url)).code == 0
        old = (
            await cortex("fact", "add", "Pluto is a planet", "--agent", "ada", "--json", *url)
        ).json()
        refused = await cortex(
            "fact", "edit", old["fact_id"], "Pluto is a dwarf", "--agent", "bo", *url
        )
        assert refused.code == 1
        assert "reason_required" in refused.err + refused.out
        edited = await cortex(
            "fact",
            "edit",
            old["fact_id"],
            "Pluto is a dwarf planet",
            "--agent",
            "bo",
            "--reason",
            "IAU 2006",
            "--json",
            *url,
        )
        assert edited.code == 0, edited.err
        new = edited.json()
        assert new["seq"] == old["seq"] + 1  # the refused edit appended nothing
        shown = await cortex(
            "show", old["fact_id"], "--min-seq", str(new["seq"] + 1), "--json", *url
        )
        assert shown.json()["fact"]["deprecated"]["successor_id"] == new["fact_id"]
