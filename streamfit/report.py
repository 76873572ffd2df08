"""Output of tools and recipes: log lines, JSON results written atomically, key/value summaries
printed."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, creating parent folders; a reader never sees a
    half-written file (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def print_key_values(summary: Mapping[str, Any]) -> None:
    """One aligned ``key  value`` line per entry."""
    width = max((len(k) for k in summary), default=0)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")


def setup_logging(rank: int) -> None:
    """Log lines to stdout with time and rank; streamfit's INFO lines on rank 0 only, and
    other libraries' (open_clip logs every model build through the root logger) from WARNING."""
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    logging.getLogger("streamfit").setLevel(logging.INFO if rank == 0 else logging.WARNING)
