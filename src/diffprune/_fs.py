"""Safe outputs: validate an output path before any work, build in a hidden sibling, then rename into place.

A failed or interrupted run therefore leaves no half-written folder, an existing result is only replaced
when the user asked for it, and nothing is ever written into (or around) an input model folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from diffprune.errors import DiffpruneError


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def _guarded_paths(protect: Iterable[str | os.PathLike | None]) -> list[Path]:
    return [_resolved(p) for p in protect if p is not None and Path(p).expanduser().exists()]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(out: str | os.PathLike, *, overwrite: bool = False,
                     protect: Iterable[str | os.PathLike | None] = (), marker: str | None = None) -> Path:
    """Raise :class:`DiffpruneError` unless ``out`` may receive a new result; return it resolved.

    ``protect`` lists input models (folders or files): the output may neither contain nor lie inside one.
    With ``overwrite`` an existing non-empty folder is only replaced if it holds ``marker`` (a file that
    diffprune writes, e.g. ``report.json``), so a slip such as ``--out . --overwrite`` cannot wipe a folder.
    """
    target = _resolved(out)
    for guarded in _guarded_paths(protect):
        if _inside(target, guarded) or _inside(guarded, target):
            raise DiffpruneError(f"refusing to write {target}: it overlaps the input model {guarded}")
    if target.exists() and not target.is_dir():
        raise DiffpruneError(f"output path {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise DiffpruneError(f"output folder {target} exists and is not empty (pass --overwrite to replace it)")
        if marker is not None and not (target / marker).exists():
            raise DiffpruneError(f"refusing to replace {target}: it has content but no {marker}, so it is not "
                                 "an earlier diffprune output")
    return target


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, *, overwrite: bool = False,
               protect: Iterable[str | os.PathLike | None] = (), marker: str | None = None) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``out``; on success it replaces ``out`` atomically.

    On an exception the staging folder is deleted and ``out`` is left exactly as it was.
    """
    protect = list(protect)
    target = check_output_dir(out, overwrite=overwrite, protect=protect, marker=marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        check_output_dir(target, overwrite=overwrite, protect=protect, marker=marker)  # changed meanwhile?
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; results should be readable like any folder
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(trash / "old")
            staging.rename(target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_output_file(path: str | os.PathLike, *, protect: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Raise :class:`DiffpruneError` unless a file may be written at ``path``; return it resolved."""
    target = _resolved(path)
    for guarded in _guarded_paths(protect):
        if _inside(target, guarded):
            raise DiffpruneError(f"refusing to write {target}: it is or lies inside the input model {guarded}")
    if target.is_dir():
        raise DiffpruneError(f"{target} is a folder, expected a file path")
    if not target.parent.is_dir():
        raise DiffpruneError(f"cannot write {target}: folder {target.parent} does not exist")
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *,
                       protect: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Write a file via a temporary sibling and ``os.replace`` (readers never see a partial file)."""
    target = check_output_file(path, protect=protect)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), **kwargs)


def check_pipeline_outputs(out: str | os.PathLike, json_path: str | os.PathLike | None, *, overwrite: bool,
                           protect: Iterable[str | os.PathLike | None]) -> None:
    """Before a long run that writes a pipeline folder (and maybe a JSON summary): check both paths."""
    protect = list(protect)
    check_output_dir(out, overwrite=overwrite, protect=protect, marker="model_index.json")
    if json_path:
        check_output_file(json_path, protect=protect)
