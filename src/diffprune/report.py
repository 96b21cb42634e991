"""Reports: one object collects text, tables, metrics, plots and image grids, then writes a folder with
``report.md``, ``report.json`` and PNG files in a single atomic step.

The output folder is checked when the report is created (before any long computation), must not exist
with content unless ``overwrite=True``, and may never overlap an input model folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import textwrap
from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path

from diffprune._fs import MANIFEST, check_output_dir, staged_dir
from diffprune.errors import DiffpruneError


_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RESERVED_KEYS = ("title", "diffprune_version", "files")


def to_jsonable(value):
    """Dataclasses, enums, paths, tensors and numpy scalars as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise DiffpruneError(f"cannot put a {type(value).__name__} into a JSON report")


def fmt(value) -> str:
    """A table cell: thousands separators for ints, 4 significant digits for floats."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if value != 0 else "0"
    return str(value).replace("|", "\\|").replace("\n", " ")


def image_grid_png(images: Sequence, columns: int = 8) -> bytes:
    """PIL images tiled pixel for pixel (row-major, ``columns`` per row) as PNG bytes."""
    import io

    from PIL import Image

    if not images:
        raise DiffpruneError("an image grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    width, height = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % columns) * width, (i // columns) * height))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "_(no rows)_"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return buf.getvalue()


class Report:
    """Collects a report in memory; :meth:`write` puts it on disk atomically."""

    def __init__(self, out_dir: str | os.PathLike, *, title: str, overwrite: bool = False,
                 protect: Iterable[str | os.PathLike | None] = ()):
        self.protect = list(protect)
        self.overwrite = overwrite
        self.out = check_output_dir(out_dir, overwrite=overwrite, protect=self.protect)
        self.title = title
        self._markdown: list[str] = []
        self._json: dict = {}
        self._files: dict[str, bytes] = {}

    def _heading(self, heading: str | None) -> None:
        if heading:
            self._markdown.append(f"## {heading}")

    def text(self, markdown: str, *, heading: str | None = None) -> None:
        self._heading(heading)
        self._markdown.append(markdown.strip())

    def metrics(self, key: str, value) -> None:
        """Store ``value`` (a dataclass, dict, list or scalar) in ``report.json`` under ``key``."""
        if key in _RESERVED_KEYS:
            raise DiffpruneError(f"'{key}' is reserved in report.json; choose another key")
        self._json[key] = to_jsonable(value)

    def table(self, rows: Sequence[dict], *, heading: str | None = None, columns: Sequence[str] | None = None,
              key: str | None = None) -> None:
        self._heading(heading)
        self._markdown.append(markdown_table(rows, columns))
        if key:
            self.metrics(key, list(rows))

    def _add_png(self, name: str, data: bytes, heading: str | None, caption: str) -> str:
        filename = name if name.endswith(".png") else f"{name}.png"
        if not _FILE_NAME.match(filename):
            raise DiffpruneError(f"report file name '{filename}' must be letters, digits, '.', '_' or '-'")
        if filename in self._files:
            raise DiffpruneError(f"the report already has a file named {filename}")
        self._files[filename] = data
        self._heading(heading)
        self._markdown.append(f"![{caption or name}]({filename})" + (f"\n\n_{caption}_" if caption else ""))
        return filename

    def figure(self, name: str, fig, *, heading: str | None = None, caption: str = "") -> str:
        """Add a matplotlib ``Figure`` as ``<name>.png``."""
        return self._add_png(name, _png(fig), heading, caption)

    def bar_chart(self, name: str, labels: Sequence[str], values: Sequence[float], *, ylabel: str,
                  heading: str | None = None, caption: str = "", log: bool = False) -> str:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(4.0, 0.9 * len(labels) + 1.5), 3.2), dpi=110)
        ax = fig.add_subplot()
        bars = ax.bar(list(labels), list(values), color="#4C72B0")
        ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=20)
        return self.figure(name, fig, heading=heading, caption=caption)

    def image_grid(self, name: str, images: Sequence, *, captions: Sequence[str] | None = None,
                   columns: int = 4, heading: str | None = None, caption: str = "") -> str:
        """Add PIL images (or HxWx3 arrays) as a captioned grid."""
        import numpy as np
        from matplotlib.figure import Figure

        if not images:
            raise DiffpruneError("an image grid needs at least one image")
        columns = max(1, min(columns, len(images)))
        rows = math.ceil(len(images) / columns)
        fig = Figure(figsize=(2.2 * columns, 2.5 * rows), dpi=110)
        for i, image in enumerate(images):
            ax = fig.add_subplot(rows, columns, i + 1)
            ax.imshow(np.asarray(image))
            ax.set_axis_off()
            if captions:
                ax.set_title(textwrap.fill(str(captions[i]), 28), fontsize=7)
        return self.figure(name, fig, heading=heading, caption=caption)

    def markdown(self) -> str:
        return f"# {self.title}\n\n" + "\n\n".join(self._markdown) + "\n"

    def write(self) -> Path:
        """Write ``report.md``, ``report.json`` and the PNGs; return the folder."""
        from diffprune import __version__

        payload = {"title": self.title, "diffprune_version": __version__, **self._json,
                   "files": sorted(self._files)}
        body = json.dumps(payload, indent=2, allow_nan=False) + "\n"
        from diffprune.integrity import checksums

        with staged_dir(self.out, overwrite=self.overwrite, protect=self.protect) as staging:
            (staging / "report.md").write_text(self.markdown(), encoding="utf-8")
            (staging / "report.json").write_text(body, encoding="utf-8")
            for filename, data in self._files.items():
                (staging / filename).write_bytes(data)
            manifest = {"format": "diffprune-report", "diffprune_version": __version__, "files": checksums(staging)}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return self.out
