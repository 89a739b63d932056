"""``--set`` items shared by the tests that point a job at the session's services."""

from __future__ import annotations

from dataclasses import asdict


def store_overrides(prefix: str, store) -> list[str]:
    """Items giving the job's store config at ``prefix`` (``storage``, ``data.store``) the values of ``store``."""
    return [f"{prefix}.{key}={value}" for key, value in asdict(store).items() if value is not None]
