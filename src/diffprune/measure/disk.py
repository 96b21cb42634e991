"""On-disk size of a saved model folder, in total and per component subfolder (``unet/``, ``vae/``, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffprune.errors import DiffpruneError


@dataclass
class DiskUsage:
    path: str
    total_bytes: int
    components: dict[str, int] = field(default_factory=dict)


def disk_usage(folder: str | Path) -> DiskUsage:
    """Bytes of every regular file under ``folder``; files at the top level are reported as ``(root)``."""
    root = Path(folder)
    if not root.is_dir():
        raise DiffpruneError(f"not a folder: {root}")
    components: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            rel = path.relative_to(root)
            key = rel.parts[0] if len(rel.parts) > 1 else "(root)"
            components[key] = components.get(key, 0) + path.stat().st_size
    return DiskUsage(str(root), sum(components.values()), components)
