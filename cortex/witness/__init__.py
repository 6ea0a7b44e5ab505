"""Witnesses (C2SP tlog-witness): a service that cosigns checkpoints, and the audit's check.

``service``: ``cortex witness``, which cosigns a checkpoint only if it
consistently extends the last one it cosigned for that origin, so a ledger
rolled back or re-chained by someone holding its whole data folder (writer
key included) cannot get a fresh cosignature. ``check``: the audit's
k-of-n requirement on the ledger's latest checkpoint.
"""
