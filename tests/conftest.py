"""Shared test set-up.

- Matplotlib draws off-screen.
- Tests are synthetic by default: MEDAD_DATA is removed for every test that is
  not marked ``realdata``, so a developer's or CI's data directory never
  changes what a unit test sees. Real-data tests take the folder from the
  ``real_data_dir`` fixture and are skipped, with the reason shown, without it.
- The checksum/array cache goes to a per-session temporary folder unless
  MEDAD_CACHE is set (CI leaves it unset: a fresh cache every run).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
REAL_DATA = os.environ.get("MEDAD_DATA") or None


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    if not os.environ.get("MEDAD_CACHE"):
        os.environ["MEDAD_CACHE"] = str(tmp_path_factory.mktemp("medad-cache"))
    yield


@pytest.fixture(autouse=True)
def _synthetic_unless_realdata(request, monkeypatch):
    if request.node.get_closest_marker("realdata") is None:
        monkeypatch.delenv("MEDAD_DATA", raising=False)
    yield


@pytest.fixture
def real_data_dir() -> Path:
    if not REAL_DATA:
        pytest.skip("MEDAD_DATA is not set: real-archive tests need the data directory (../shared/data in CI)")
    return Path(REAL_DATA)
