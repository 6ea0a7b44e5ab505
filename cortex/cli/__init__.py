"""The ``cortex`` command line (entry point ``cortex.cli:main``; ``python -m cortex.cli``)."""

from cortex.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
