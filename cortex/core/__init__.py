"""The writer's pure core: ledger state, judging, linking, signing and staging; no I/O."""
