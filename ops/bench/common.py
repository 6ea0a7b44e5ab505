"""What the write, read and replay benchmarks share.

The bars and their output, the bounded waits, ``cortex up`` as a child
process, SIGTERM handling and the ``main()`` scaffolding: parse, run, print
one table or one JSON object, and exit 0, 2 (the benchmark could not
measure), 130 (interrupted) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import structlog
from rich.console import Console
from rich.table import Table

from cortex.errors import CortexError
from cortex.nats import EmbeddedServer
from ops.bench import synth

T = TypeVar("T")
R = TypeVar("R")

#: What ``cortex up`` prints once it serves.
UP_LINE: Final = "CORTEX is up"


class BenchError(Exception):
    """The benchmark could not measure what it set out to (not a missed bar)."""


@dataclass(frozen=True, slots=True)
class Bar:
    """One of the issue's bars: what was measured against its threshold."""

    name: str
    value: float
    threshold: float
    passed: bool
    #: How the value reads, for benchmarks that print it by unit.
    unit: str = ""
    #: The durability mode the bar was measured in, for benchmarks that run several.
    mode: str | None = None


# -- measuring --------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (nan if empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def bounded(what: str, awaitable: Awaitable[T], limit_s: float) -> T:
    """``awaitable``'s result, or BenchError if it takes longer than ``limit_s``."""
    try:
        async with asyncio.timeout(limit_s):
            return await awaitable
    except TimeoutError as e:
        raise BenchError(f"{what} did not finish within {limit_s:.0f}s") from e


def cancel_on_sigterm() -> None:
    """From now on SIGTERM cancels the current task, so the run stops cleanly (children too)."""
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)


class CortexUp:
    """``cortex up ARGS`` as a child process, owned and stopped by this object."""

    def __init__(
        self,
        what: str,
        args: Sequence[str],
        log_path: Path,
        *,
        start_s: float,
        stop_s: float,
        cwd: Path | None = None,
    ) -> None:
        self.what = what
        self.args = list(args)
        self.log_path = log_path
        self.start_s = start_s
        self.stop_s = stop_s
        self.cwd = cwd
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start it and wait, at most ``start_s``, until it says it is up."""
        self._log = self.log_path.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cortex.cli",
            "up",
            *self.args,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        assert self._proc.stdout is not None
        await bounded(f"{self.what}'s start-up", self._wait_up(self._proc.stdout), self.start_s)
        self._drain = asyncio.create_task(self._drain_stdout(self._proc.stdout))

    async def _wait_up(self, stdout: asyncio.StreamReader) -> None:
        while True:
            raw = await stdout.readline()
            if not raw:
                raise BenchError(f"{self.what} exited during start-up: {self.log_tail()}")
            if UP_LINE in raw.decode(errors="replace"):
                return

    @staticmethod
    async def _drain_stdout(stdout: asyncio.StreamReader) -> None:
        while await stdout.readline():
            pass

    def log_tail(self, lines: int = 5) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    async def stop(self) -> int | None:
        """SIGTERM, wait; SIGKILL if it hangs. Returns the exit code."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(self.stop_s):
                        code = await proc.wait()
                except TimeoutError:
                    proc.kill()
                    code = await proc.wait()
            else:
                code = proc.returncode
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


@contextlib.asynccontextmanager
async def stopped_after(
    child: CortexUp, server: EmbeddedServer, *, log_label: str, name: str
) -> AsyncIterator[None]:
    """Stop ``child``, then ``server``, when the block ends.

    If the block fails, the tail of the child's log goes to stderr first; if
    it succeeds, a child that exited other than cleanly is warned of.
    """
    try:
        yield
    except BaseException:
        if tail := child.log_tail():
            print(f"{log_label}: {tail}", file=sys.stderr)
        raise
    finally:
        code = await child.stop()
        await server.stop()
    if code not in (0, None):
        print(f"warning: {name} exited with {code}", file=sys.stderr)


# -- output -----------------------------------------------------------------


def json_float(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def json_fields(obj: Any, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """A dataclass's fields, floats rounded (nan as null), but those in ``exclude``."""
    return {
        k: json_float(v) if isinstance(v, float) else v
        for k, v in asdict(obj).items()
        if k not in exclude
    }


def bars_json(bars: Sequence[Bar]) -> list[dict[str, Any]]:
    return [
        {
            "bar": b.name,
            **({} if b.mode is None else {"mode": b.mode}),
            "value": json_float(b.value),
            "threshold": b.threshold,
            "pass": b.passed,
        }
        for b in bars
    ]


def verdict_json(bars: Sequence[Bar]) -> dict[str, Any]:
    """The tail of a report's JSON: its bars, and whether every one passed."""
    return {"bars": bars_json(bars), "pass": all(b.passed for b in bars)}


def by_unit(b: Bar) -> str:
    """A bar's measured value as its ``unit`` reads (events per second when it has none)."""
    if b.unit == "%":
        return f"{b.value:.0%}"
    if b.unit == "x":
        return f"{b.value:.2f}x"
    if b.unit == "ms":
        return f"{b.value:,.0f} ms"
    if b.unit == "MB":
        return f"{b.value:,.0f} MB"
    if b.unit == "bool":
        return "yes" if b.passed else "no"
    return f"{b.value:,.0f}/s"


def print_bars(
    console: Console, bars: Sequence[Bar], measured: Callable[[Bar], str] = by_unit
) -> None:
    """The bars table; a mode column when the bars have modes."""
    with_mode = any(b.mode is not None for b in bars)
    table = Table(title="bars", show_header=True)
    for name in (
        ("bar", "mode", "measured", "result") if with_mode else ("bar", "measured", "result")
    ):
        table.add_column(name, justify="left" if name in ("bar", "mode") else "right")
    for b in bars:
        result = "[green]PASS[/]" if b.passed else "[red]FAIL[/]"
        if with_mode:
            table.add_row(b.name, b.mode, measured(b), result)
        else:
            table.add_row(b.name, measured(b), result)
    console.print(table)


# -- main() -----------------------------------------------------------------


def parser(
    module: str, doc: str | None, count: str, default: int, help_text: str
) -> argparse.ArgumentParser:
    """``python -m MODULE [--COUNT N] [--json]``, described by the docstring's first line."""
    result = argparse.ArgumentParser(
        prog=f"python -m {module}", description=(doc or "").split("\n")[0]
    )
    result.add_argument(f"--{count}", type=int, default=default, help=help_text)
    result.add_argument(
        "--json", action="store_true", help="print one JSON object and nothing else"
    )
    return result


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def on_ledger(
    name: str,
    events: int,
    mix: synth.Mix | None,
    run: Callable[[synth.Ledger, Path], Coroutine[Any, Any, R]],
) -> R:
    """Generate a ledger of ``events`` in a temp dir, ``run`` on it; the dir is removed after."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # while generating; the loop takes over
    tmp = Path(tempfile.mkdtemp(prefix=f"cortex-bench-{name}-"))
    try:
        ledger = synth.generate(tmp / "ledger.bin", events, mix)
        with ledger:
            return asyncio.run(run(ledger, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_main(
    measure: Callable[[], R],
    *,
    as_json: bool,
    to_json: Callable[[R], dict[str, Any]],
    print_table: Callable[[R, Console], None],
    width: int,
) -> int:
    """Measure, then print one JSON object or the tables; the exit code."""
    # The embedded server and the pool log through structlog: keep stdout for the results.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    try:
        result = measure()
    except (BenchError, CortexError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # SIGTERM
        print("benchmark stopped", file=sys.stderr)
        return 143
    if as_json:
        sys.stdout.write(json.dumps(to_json(result)) + "\n")
    else:
        # Piped, rich would assume 80 columns and squeeze the headers.
        print_table(result, Console(highlight=False, width=None if sys.stdout.isatty() else width))
    return 0
