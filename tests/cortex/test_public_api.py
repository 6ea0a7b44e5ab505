"""The public surface stays small, sorted and complete."""

from __future__ import annotations

import cortex
from cortex import errors


def test_all_is_sorted_and_importable() -> None:
    assert cortex.__all__ == sorted(cortex.__all__)
    for name in cortex.__all__:
        assert getattr(cortex, name) is not None


def test_every_user_facing_error_is_exported() -> None:
    """A script can catch any error CORTEX raises without importing private modules."""
    raised = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.CortexError)
    }
    assert raised <= set(cortex.__all__)
