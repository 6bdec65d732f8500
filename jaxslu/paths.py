"""Where jaxslu finds its bundled data and caches. Bundled data is read from the project's own
checkout (`data/` beside `jaxslu/`), or from $JAXSLU_DATA when set."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    d = Path(os.environ.get("JAXSLU_DATA", REPO_ROOT / "data"))
    if not d.is_dir():
        raise FileNotFoundError(
            f"bundled data folder {str(d)!r} not found; run from a clone of jaxslu (pip install -e .)"
            " or set JAXSLU_DATA to a folder holding fsdd/, clinc150/ and slurp/")
    return d


def cache_dir(configured: str = "") -> Path:
    d = Path(configured or os.environ.get("JAXSLU_CACHE", Path.home() / ".cache" / "jaxslu"))
    d.mkdir(parents=True, exist_ok=True)
    return d
