"""``python -m cortex.witness ARGS`` is ``cortex witness ARGS``."""

import sys

from cortex.cli.main import main

sys.exit(main(["witness", *sys.argv[1:]]))
