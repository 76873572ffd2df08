"""Output of tools and recipes: log lines, JSON results written atomically, key/value summaries
and aligned tables printed, PNG figures."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image


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


def setup_logging(rank: int | None = None, stream: TextIO = sys.stdout) -> None:
    """Log lines with their time (and ``rank``, in a run of several processes) to ``stream``:
    streamfit's INFO lines (on rank 0 only), other libraries' from WARNING (open_clip logs
    every model build at INFO through the root logger). A recipe logs to stdout, among its
    progress lines; a tool to stderr, apart from the tables it prints. A recipe's call
    replaces any set-up before it (a teacher's run sets its own); a tool's keeps one."""
    where = "" if rank is None else f"[rank {rank}] "
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {where}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=stream,
        force=rank is not None,
    )
    logging.getLogger("streamfit").setLevel(logging.INFO if not rank else logging.WARNING)


def format_table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    formats: Sequence[str] = (),
    markdown: bool = False,
) -> str:
    """An aligned text table with a rule under the header (``markdown``: a Markdown table to
    paste into the docs).

    ``formats[i]`` is the format spec of column ``i``'s numbers (e.g. ``".2f"``, ``"+.2f"``,
    ``".1%"``; default ``str``; integers stay whole under an ``f`` spec); ``None`` and NaN
    show as ``-``. A column of numbers is
    right-aligned, any other column left-aligned.
    """
    cells: list[list[str]] = []
    numeric = [True] * len(header)
    for row in rows:
        line = []
        for i, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
                numeric[i] = False
            line.append(_cell(value, formats[i] if i < len(formats) else ""))
        cells.append(line)
    widths = [max([len(h)] + [len(line[i]) for line in cells]) for i, h in enumerate(header)]
    if markdown:
        rule = ["---:" if num else "---" for num in numeric]
        return "\n".join(f"| {' | '.join(line)} |" for line in [list(header), rule, *cells])

    def join(line: Sequence[str]) -> str:
        aligned = zip(line, widths, numeric, strict=True)
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in aligned).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([join(header), rule, *(join(line) for line in cells)])


def print_table(*args: Any, **kwargs: Any) -> None:
    """Print :func:`format_table` (same arguments)."""
    print(format_table(*args, **kwargs))


@contextmanager
def png_figure(
    path: str | Path, size: tuple[float, float] = (6, 4), grid: str | None = "major", dpi: int = 120
) -> Iterator[Any]:
    """One matplotlib axes to draw on, saved as a PNG at ``path`` (folders created, tight
    layout) when the block ends, its figure closed. Drawn off-screen (the Agg backend): tools
    run on machines with no display. ``size`` in inches; ``grid``: a light grid on the
    ``major`` (or ``both``) ticks, None for none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        if grid:
            ax.grid(True, which=grid, alpha=0.3)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def splat_preview(original: torch.Tensor, recon: torch.Tensor, params: torch.Tensor) -> Image.Image:
    """A PIL image of ``original | reconstruction | splat ellipses`` side by side: tensors
    ``[H, W, 3]`` in 0..1, ``params [n, 8]`` of the valid splats; the ellipses are the
    1-sigma contours in each splat's colour over the dimmed original."""
    import torch
    from PIL import Image, ImageDraw

    from streamfit.render import cholesky_factors

    def to_u8(t: torch.Tensor) -> np.ndarray:
        return (t.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    h, w, _ = original.shape
    canvas = Image.new("RGB", (3 * w, h))
    canvas.paste(Image.fromarray(to_u8(original)), (0, 0))
    canvas.paste(Image.fromarray(to_u8(recon)), (w, 0))
    panel = Image.fromarray((to_u8(original) * 0.25).astype("uint8"))
    draw = ImageDraw.Draw(panel)
    l11, l21, l22 = (t.cpu() for t in cholesky_factors(params.float()))
    angles = torch.linspace(0, 2 * math.pi, 17)
    ex, ey = torch.cos(angles), torch.sin(angles)
    for i in range(params.shape[0]):
        x, y = params[i, 0].item(), params[i, 1].item()
        xs = x + l11[i] * ex
        ys = y + l21[i] * ex + l22[i] * ey
        color = tuple(int(c) for c in (params[i, 5:8].clamp(0, 1) * 255).tolist())
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=color, width=1)
        draw.point((x, y), fill=(255, 255, 255))
    canvas.paste(panel, (2 * w, 0))
    return canvas


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) and spec.endswith("f"):
        return str(value)  # a count stays a whole number in a column of decimals
    if isinstance(value, (int, float)) and not isinstance(value, bool) and spec:
        return format(value, spec)
    return str(value)
