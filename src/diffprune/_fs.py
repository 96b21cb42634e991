"""Safe outputs: validate every output path before any work, build in a hidden sibling, then rename into place.

A failed or interrupted run leaves no half-written result, an existing result is only replaced when the user
asked for it and diffprune wrote it, and nothing is ever written into (or around) an input model folder.
Staging names carry the writer's process id (``.NAME.tmp-PID-*``, ``.NAME.old-PID-*``), so the next run can
tell leftovers of a killed process from a run in progress: it deletes the former and, if a replacement was
cut between its two renames, puts the previous result back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from diffprune.errors import DiffpruneError

MANIFEST = "diffprune.json"  # every folder diffprune writes (pipelines and reports) carries one
_LEGACY_REPORT = "report.json"  # reports written before reports had a manifest
_log = logging.getLogger("diffprune")


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


def _read_json_object(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_diffprune_output(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` was written by diffprune (its manifest says so), and so may be replaced."""
    folder = Path(folder)
    manifest = _read_json_object(folder / MANIFEST)
    if manifest is not None:
        return str(manifest.get("format", "")).startswith("diffprune")
    report = _read_json_object(folder / _LEGACY_REPORT)
    return report is not None and "diffprune_version" in report and "files" in report


def _staging_pid(entry: Path, target: Path, kind: str) -> int | None:
    """The writer's process id if ``entry`` is a ``kind`` ("tmp" or "old") staging entry of ``target``."""
    prefix = f".{target.name}.{kind}-"
    if not entry.name.startswith(prefix):
        return None
    pid = entry.name[len(prefix):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def recover_interrupted(target: str | os.PathLike) -> None:
    """Clean up after a diffprune process that was killed while writing ``target``.

    A replacement cut between its two renames left the previous result in ``.NAME.old-PID-*/old`` and no
    ``target``: it is moved back. Staging entries (``.NAME.tmp-PID-*``) of dead processes are deleted.
    """
    target = _resolved(target)
    if not target.parent.is_dir():
        return
    entries = sorted(target.parent.iterdir())
    for kind in ("old", "tmp"):
        for entry in entries:
            pid = _staging_pid(entry, target, kind)
            if pid is None or _alive(pid) or not os.path.lexists(entry):
                continue
            previous = entry / "old"
            if kind == "old" and previous.exists() and not os.path.lexists(target):
                previous.rename(target)
                _log.warning("restored %s from a replacement that was interrupted", target)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _check_writable(target: Path) -> None:
    """Fail now, not after the work, if ``target`` cannot be created (read-only or missing parent, a file
    where a folder should be)."""
    existing = target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DiffpruneError(f"cannot write {target}: {existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".diffprune-probe-", dir=existing))
    except OSError as e:
        raise DiffpruneError(f"cannot write {target}: no file can be created in {existing} "
                             f"({e.strerror or e})") from None


def check_output_dir(out: str | os.PathLike, *, overwrite: bool = False,
                     protect: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Raise :class:`DiffpruneError` unless ``out`` may receive a new result folder; return it resolved.

    ``protect`` lists input models (folders or files): the output may neither contain nor lie inside one.
    An existing non-empty folder is only replaced with ``overwrite`` and only if diffprune wrote it (its
    ``diffprune.json``), so a slip such as ``--out ~/my-model --overwrite`` cannot delete a user's folder.
    """
    target = _resolved(out)
    for guarded in _guarded_paths(protect):
        if _inside(target, guarded) or _inside(guarded, target):
            raise DiffpruneError(f"refusing to write {target}: it overlaps the input model {guarded}")
    recover_interrupted(target)
    if target.exists() and not target.is_dir():
        raise DiffpruneError(f"output path {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise DiffpruneError(f"output folder {target} exists and is not empty (pass --overwrite to replace it)")
        if not is_diffprune_output(target):
            raise DiffpruneError(f"refusing to replace {target}: it has no {MANIFEST} naming diffprune as its "
                                 "writer, so it is not an earlier diffprune output")
    _check_writable(target)
    return target


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False,
                      protect: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Raise :class:`DiffpruneError` unless a file may be written at ``path``; return it resolved.

    An existing file is only replaced with ``overwrite`` (the same rule as for folders)."""
    target = _resolved(path)
    for guarded in _guarded_paths(protect):
        if _inside(target, guarded):
            raise DiffpruneError(f"refusing to write {target}: it is or lies inside the input model {guarded}")
    if target.is_dir():
        raise DiffpruneError(f"{target} is a folder, expected a file path")
    if not target.parent.is_dir():
        raise DiffpruneError(f"cannot write {target}: folder {target.parent} does not exist")
    recover_interrupted(target)
    if target.exists() and not overwrite:
        raise DiffpruneError(f"{target} exists (pass --overwrite to replace it)")
    _check_writable(target)
    return target


def check_outputs(folders: Mapping[str, str | os.PathLike | None] = {},
                  files: Mapping[str, str | os.PathLike | None] = {}, *, overwrite: bool = False,
                  protect: Iterable[str | os.PathLike | None] = ()) -> None:
    """Check every output of a command (keys name them, e.g. ``"--out"``) on its own and against the others:
    no two may be the same path or lie inside one another."""
    protect = list(protect)
    paths = {name: _resolved(p) for name, p in [*folders.items(), *files.items()] if p is not None}
    names = list(paths)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _inside(paths[a], paths[b]) or _inside(paths[b], paths[a]):
                raise DiffpruneError(f"{a} and {b} must name separate paths ({paths[a]} and {paths[b]} overlap)")
    for path in folders.values():
        if path is not None:
            check_output_dir(path, overwrite=overwrite, protect=protect)
    for path in files.values():
        if path is not None:
            check_output_file(path, overwrite=overwrite, protect=protect)


def _follow_umask(folder: Path) -> None:
    """Give staged files and folders the modes a plain ``open``/``mkdir`` would (temp files start at 0600)."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for n in names:
            os.chmod(os.path.join(root, n), 0o666 & ~mask)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, *, overwrite: bool = False,
               protect: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``out``; on success it replaces ``out``.

    On an exception the staging folder is deleted and ``out`` is left exactly as it was. Replacing is two
    renames (the old result into ``.NAME.old-PID-*``, the new one into place); a process killed between them
    is repaired by the next run that writes ``out`` (:func:`recover_interrupted`).
    """
    protect = list(protect)
    target = check_output_dir(out, overwrite=overwrite, protect=protect)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield staging
        check_output_dir(target, overwrite=overwrite, protect=protect)  # changed meanwhile?
        _follow_umask(staging)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
            target.rename(trash / "old")
            staging.rename(target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False,
                       protect: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Write a file via a temporary sibling and ``os.replace`` (readers never see a partial file)."""
    target = check_output_file(path, overwrite=overwrite, protect=protect)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
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
