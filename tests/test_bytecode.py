"""Under PYTHONDONTWRITEBYTECODE every process of the service keeps its bytecode in a cache, not beside the sources."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])


def test_the_server_and_the_workers_write_their_bytecode_to_the_cache(
    service_factory, demo_registry: str, tmp_path: Path
) -> None:
    cache_home = tmp_path / "cache-home"
    service = service_factory(
        ["serve"],
        {"MLFLOW_TRACKING_URI": demo_registry, "WORKERS": "1", "XDG_CACHE_HOME": str(cache_home),
         "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    service.wait_ready()
    assert service.stop() == 0
    cache = cache_home / "fraud-inference" / "pycache"
    tag = sys.implementation.cache_tag
    installed_compiled = (SITE_PACKAGES / "litestar" / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    if installed_compiled:  # e.g. a virtual environment synced with UV_COMPILE_BYTECODE=1: nothing to keep
        assert not cache.exists()
        return
    mirrored = cache / SITE_PACKAGES.relative_to("/")
    # Imported by the command (MLflow), by the HTTP process only (granian's Litestar app), by the workers only.
    for module in ("mlflow/__init__", "litestar/app", "xgboost/core", "lightgbm/basic"):
        assert (mirrored / f"{module}.{tag}.pyc").is_file(), module
    assert not list((SITE_PACKAGES / "xgboost").glob("__pycache__"))
