"""Compiled bytecode for the service's processes, kept in a cache directory when Python may not write it beside
the sources.

NOTE: with PYTHONDONTWRITEBYTECODE set (as on these machines) and no `.pyc` installed (uv compiles none unless
told to, and telling it costs ~2.5 s at every `uv run`, astral-sh/uv#12202), every start would compile scipy,
scikit-learn and MLflow from source in each process. Instead the command points PYTHONPYCACHEPREFIX at a cache
directory that every process it starts inherits; each process writes there what it imports the first time
(only the modules the service really uses), and reads it from then on. The source tree stays clean, as
PYTHONDONTWRITEBYTECODE intends. Nothing changes when the installed packages carry bytecode (a container image
built with UV_COMPILE_BYTECODE=1) or when PYTHONPYCACHEPREFIX is set already.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["choose_bytecode_cache", "write_to_chosen_cache"]

_PREFIX = "PYTHONPYCACHEPREFIX"
# Marks the cache as chosen by the command: only then do the processes it starts write into it.
_CHOSEN = "FRAUD_INFERENCE_PYCACHE"


def choose_bytecode_cache() -> None:
    """In the command, before the heavy imports: choose the cache that every process it starts inherits."""
    if _CHOSEN in os.environ or _PREFIX in os.environ or not sys.flags.dont_write_bytecode or _installed_compiled():
        return
    chosen = str(_cache_dir())
    os.environ[_PREFIX] = os.environ[_CHOSEN] = sys.pycache_prefix = chosen
    write_to_chosen_cache()


def write_to_chosen_cache() -> None:
    """Write bytecode into the cache the command chose (a no-op anywhere else).

    NOTE: `multiprocessing` and granian start children with `-B` when the parent had PYTHONDONTWRITEBYTECODE,
    so every process of the service calls this as `fraud_inference` is imported.
    """
    chosen = os.environ.get(_CHOSEN)
    if chosen is not None and sys.pycache_prefix == chosen:
        sys.dont_write_bytecode = False


def _installed_compiled() -> bool:
    """Whether the installed packages carry their bytecode (a sample: Litestar's package)."""
    spec = importlib.util.find_spec("litestar")
    if spec is None or spec.origin is None:
        return False
    source = Path(spec.origin)
    return (source.parent / "__pycache__" / f"{source.stem}.{sys.implementation.cache_tag}.pyc").is_file()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    try:
        root = Path(base) if base else Path.home() / ".cache"
    except RuntimeError:  # no home directory (a container's arbitrary user)
        root = Path(tempfile.gettempdir())
    return root / "fraud-inference" / "pycache"
