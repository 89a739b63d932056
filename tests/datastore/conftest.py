"""Fixtures for the data store tests: real catalogue scans preprocessed once per session (2 mm, 128 px)."""

from __future__ import annotations

from functools import cache

import pytest

from braindino.volumes import PreprocessSpec
from infra.local.catalogue import preprocessed as preprocess_entry
from tests.conftest import real_scan

SPEC = PreprocessSpec(spacing=(2.0, 2.0, 2.0), slice_size=128)


@pytest.fixture(scope="session")
def preprocessed():
    """``preprocessed(catalogue_name)`` -> (canonical volume, kept slices) at 2 mm and 128 px; skips when absent."""
    @cache
    def load(name: str):
        real_scan(name)
        return preprocess_entry(name, SPEC)

    return load
