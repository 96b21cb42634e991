"""Safe outputs: validate every output path before any work, build in a hidden sibling, then rename into place.

A failed or interrupted run leaves no half-written result, an existing result is only replaced when the user
asked for it and diffprune wrote it, and nothing is ever written into (or around) an input model folder.
Each write holds a lock file (``.NAME.lock-TOKEN``) beside its staging entries (``.NAME.tmp-TOKEN``,
``.NAME.old-TOKEN``); the kernel releases it when the writer dies, so the next run can tell leftovers of a killed
process from a run in progress: it deletes the former and, if a replacement was cut between its two renames,
puts the previous result back.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from diffprune.errors import DiffpruneError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no recovery of interrupted runs
    fcntl = None

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


@contextlib.contextmanager
def _claim(parent: Path, name: str) -> Iterator[str]:
    """A unique token for staging ``name`` in ``parent``, whose lock file ``.NAME.lock-TOKEN`` stays locked for
    the life of the block. The kernel drops the lock when the process dies, however it dies, so a later run
    can tell an abandoned staging entry from a live one (process ids cannot: they repeat across containers)."""
    fd, lock = tempfile.mkstemp(prefix=f".{name}.lock-", dir=parent)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh file: nobody else holds it
            except OSError:  # a file system without flock: the write goes on, unrecoverable if killed
                pass
        yield Path(lock).name[len(f".{name}.lock-"):]
    finally:
        os.close(fd)  # before unlinking, which Windows refuses for an open file
        Path(lock).unlink(missing_ok=True)


@contextlib.contextmanager
def _if_abandoned(lock: Path) -> Iterator[bool]:
    """Yield True, holding the lock, if no live process holds ``lock``."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False  # its writer is alive
            return
        yield True
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink(missing_ok=True)


_TOKEN = re.compile(r"^[a-z0-9_]{8}$")  # what mkstemp puts after the prefix


def recover_interrupted(target: str | os.PathLike, *, own_token: str | None = None) -> None:
    """Clean up after a diffprune process that was killed while writing ``target``.

    A replacement cut between its two renames left the previous result in ``.NAME.old-TOKEN`` and no
    ``target``: it is moved back. Staging entries (``.NAME.tmp-TOKEN``) whose writer is gone are deleted.
    Entries whose lock is still held belong to a running process and are left alone, and so are the caller's
    own (``own_token``: on file systems that emulate flock with per-process locks, a process can always take
    its own lock again).
    """
    if fcntl is None:
        return  # no way to tell a live writer from a dead one here: leave everything
    target = _resolved(target)
    if not target.parent.is_dir():
        return
    prefix = f".{target.name}."
    for lock in sorted(target.parent.glob(glob.escape(prefix) + "lock-*")):
        token = lock.name[len(prefix) + len("lock-"):]
        if not _TOKEN.match(token) or token == own_token:
            continue  # another output's lock (a name such as "x.lock-foo"), or our own
        with _if_abandoned(lock) as abandoned:
            if not abandoned:
                continue
            old, staging = target.parent / f"{prefix}old-{token}", target.parent / f"{prefix}tmp-{token}"
            if os.path.lexists(old) and not os.path.lexists(target):
                old.rename(target)
                _log.warning("restored %s from a replacement that was interrupted", target)
            _remove(old)
            _remove(staging)
            lock.unlink(missing_ok=True)


def _foreign_files(folder: Path) -> list[str]:
    """Files in a diffprune output that its manifest does not list (added by the user afterwards)."""
    listed = (_read_json_object(folder / MANIFEST) or {}).get("files")
    if not isinstance(listed, dict):
        return []  # written before manifests listed their files
    present = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(p for p in present if p != MANIFEST and p not in listed)


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
                     protect: Iterable[str | os.PathLike | None] = (), _own_token: str | None = None) -> Path:
    """Raise :class:`DiffpruneError` unless ``out`` may receive a new result folder; return it resolved.

    ``protect`` lists input models (folders or files): the output may neither contain nor lie inside one.
    An existing non-empty folder is only replaced with ``overwrite`` and only if diffprune wrote it (its
    ``diffprune.json``), so a slip such as ``--out ~/my-model --overwrite`` cannot delete a user's folder.
    """
    target = _resolved(out)
    for guarded in _guarded_paths(protect):
        if _inside(target, guarded) or _inside(guarded, target):
            raise DiffpruneError(f"refusing to write {target}: it overlaps the input {guarded}")
    recover_interrupted(target, own_token=_own_token)
    if target.exists() and not target.is_dir():
        raise DiffpruneError(f"output path {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise DiffpruneError(f"output folder {target} exists and is not empty (pass --overwrite to replace it)")
        if not is_diffprune_output(target):
            raise DiffpruneError(f"refusing to replace {target}: it has no {MANIFEST} naming diffprune as its "
                                 "writer, so it is not an earlier diffprune output")
        foreign = _foreign_files(target)
        if foreign:
            raise DiffpruneError(f"refusing to replace {target}: it holds files diffprune did not write there "
                                 f"(e.g. {foreign[0]}); move them first")
    _check_writable(target)
    return target


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False,
                      protect: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Raise :class:`DiffpruneError` unless a file may be written at ``path``; return it resolved.

    An existing file is only replaced with ``overwrite`` (the same rule as for folders)."""
    target = _resolved(path)
    for guarded in _guarded_paths(protect):
        if _inside(target, guarded):
            raise DiffpruneError(f"refusing to write {target}: it is or lies inside the input {guarded}")
    if not target.parent.is_dir():
        raise DiffpruneError(f"cannot write {target}: folder {target.parent} does not exist")
    recover_interrupted(target)
    if target.is_dir():
        raise DiffpruneError(f"{target} is a folder, expected a file path")
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
    renames in the same parent (the old result to ``.NAME.old-TOKEN``, the new one into place); a process
    killed between them is repaired by the next run that writes ``out`` (:func:`recover_interrupted`).
    """
    protect = list(protect)
    target = check_output_dir(out, overwrite=overwrite, protect=protect)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _claim(target.parent, target.name) as token:
        staging = target.parent / f".{target.name}.tmp-{token}"
        staging.mkdir()
        try:
            yield staging
            check_output_dir(target, overwrite=overwrite, protect=protect, _own_token=token)  # changed meanwhile?
            _follow_umask(staging)
            if target.exists():
                old = target.parent / f".{target.name}.old-{token}"
                target.rename(old)  # same parent: no write permission on the old folder itself is needed
                try:
                    staging.rename(target)
                except BaseException:  # interrupted or refused: put the previous result back
                    if not os.path.lexists(target):
                        old.rename(target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
                if os.path.lexists(old):
                    _log.warning("could not delete the previous result, left in %s", old)
            else:
                staging.rename(target)
        finally:
            _remove(staging)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False,
                       protect: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Write a file via a temporary sibling and ``os.replace`` (readers never see a partial file)."""
    target = check_output_file(path, overwrite=overwrite, protect=protect)
    with _claim(target.parent, target.name) as token:
        tmp = target.parent / f".{target.name}.tmp-{token}"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), **kwargs)
