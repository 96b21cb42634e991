"""Integrity checks on what diffprune loads and saves.

- ``model_index.json`` entries must name classes of the installed diffusers or transformers, so loading a folder
  never imports code from it;
- a saved folder's manifest records a SHA-256 of every file, verified on load (bit flips, truncation);
- weights holding NaN or infinity are refused (they would give black images, or be copied into a pruned model).
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

import torch

from diffprune._fs import MANIFEST
from diffprune.errors import DiffpruneError
from diffprune.measure.params import model_components

_PIPELINE_MODULE_LIBRARIES = ("stable_diffusion", "stable_diffusion_xl")  # e.g. SD-1.5's safety checker


def check_model_index(index: dict, where) -> None:
    """Refuse a ``model_index.json`` whose components are not classes of the installed diffusers or
    transformers (a library name that matches a ``.py`` file in the folder would make older diffusers import
    that file)."""
    import diffusers
    import transformers

    for key, entry in index.items():
        if key.startswith("_") or not isinstance(entry, list):
            continue  # metadata and pipeline options such as requires_safety_checker
        if len(entry) != 2:
            raise DiffpruneError(f"{where}: the entry for '{key}' is not a [library, class] pair")
        library, class_name = entry
        if library is None and class_name is None:
            continue
        if not (isinstance(library, str) and isinstance(class_name, str) and class_name.isidentifier()):
            raise DiffpruneError(f"{where}: the entry for '{key}' is not a [library, class] pair of names")
        if library == "diffusers":
            module = diffusers
        elif library == "transformers":
            module = transformers
        elif library in _PIPELINE_MODULE_LIBRARIES:
            module = getattr(diffusers.pipelines, library)
        else:
            raise DiffpruneError(f"{where}: '{key}' names the library '{library}'; diffprune only loads diffusers "
                                 "and transformers classes and never runs code from a model folder")
        try:
            cls = getattr(module, class_name, None)
        except Exception:  # a lazy module that cannot import the name (missing optional backend)
            cls = None
        if not isinstance(cls, type):
            raise DiffpruneError(f"{where}: '{key}' names {library}.{class_name}, which this {library} does not have")


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` except the manifest, by relative POSIX path, sorted."""
    sums = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            sums[path.relative_to(folder).as_posix()] = file_sha256(path)
    return sums


def verify_checksums(folder: Path, manifest: dict, only: str | None = None) -> None:
    """Compare the files of a saved folder with the SHA-256 sums its manifest recorded (``only``: the files of
    one component folder)."""
    recorded = manifest.get("files")
    if recorded is None:
        return  # saved before diffprune recorded checksums
    if not isinstance(recorded, dict):
        raise DiffpruneError(f"{folder / MANIFEST}: its file list is damaged")
    for rel, digest in recorded.items():
        parts = PurePosixPath(str(rel)).parts
        if not parts or parts[0] in ("/", "..") or ".." in parts:
            raise DiffpruneError(f"{folder / MANIFEST}: '{rel}' is not a path inside the folder")
        if only is not None and parts[0] != only:
            continue
        path = folder.joinpath(*parts)
        if not path.is_file():
            raise DiffpruneError(f"{path} is missing: the folder is incomplete (it was saved with this file)")
        if file_sha256(path) != digest:
            raise DiffpruneError(f"{path} is damaged: its SHA-256 differs from the one recorded when diffprune "
                                 "saved it (re-save the model, or pass --no-verify to load it anyway)")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_finite(obj) -> None:
    """Refuse weights holding NaN or infinity (a damaged checkpoint would otherwise give black images)."""
    modules = {"": obj} if isinstance(obj, torch.nn.Module) else model_components(obj)
    for component, module in modules.items():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point() or tensor.device.type == "meta":
                continue
            flat = tensor.detach().reshape(-1)
            if not all(bool(torch.isfinite(part).all()) for part in flat.split(1 << 24)):
                where = f"{component} weight" if component else "weight"
                raise DiffpruneError(f"{where} '{name}' holds NaN or infinite values; the checkpoint is damaged "
                                     "(pass --allow-nonfinite to load it anyway)")
