"""Integrity checks on what diffprune loads and saves.

- ``model_index.json`` entries must name classes of the installed diffusers or transformers, so loading a folder
  never imports code from it;
- a saved folder's manifest records a SHA-256 of every file, verified on load (bit flips, truncation);
- weights holding NaN or infinity are refused (they would give black images, or be copied into a pruned model);
- a folder whose weight files lack tensors the model expects is refused (the libraries would fill them randomly).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import torch

from diffprune._fs import MANIFEST
from diffprune.anatomy import is_module, model_components
from diffprune.errors import DiffpruneError, first_line

_PIPELINE_MODULE_LIBRARIES = ("stable_diffusion", "stable_diffusion_xl")  # e.g. SD-1.5's safety checker


_RENAMED_TRANSFORMERS_CLASSES = {"CLIPFeatureExtractor": "CLIPImageProcessor"}  # older SD-1.x folders


def _component_bases() -> tuple[type, ...]:
    """What a pipeline component may be: a model, scheduler, tokenizer or image processor -- not a pipeline,
    whose own model_index.json diffusers would follow unchecked."""
    import diffusers
    import transformers

    return (diffusers.ModelMixin, diffusers.SchedulerMixin, transformers.PreTrainedModel,
            transformers.PreTrainedTokenizerBase, transformers.ImageProcessingMixin,
            transformers.FeatureExtractionMixin, transformers.ProcessorMixin)


def read_json(path: Path) -> dict:
    """A JSON object from a user's file, or one clear :class:`DiffpruneError`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffpruneError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise DiffpruneError(f"{path} does not hold a JSON object")
    return data


def check_model_index(index: dict, where) -> None:
    """Refuse a ``model_index.json`` whose components are not model, scheduler, tokenizer or processor classes
    of the installed diffusers or transformers (a library name that matches a ``.py`` file in the folder would
    make older diffusers import that file)."""
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
        if library == "transformers":  # names transformers retired that diffusers still loads under the new name
            class_name = _RENAMED_TRANSFORMERS_CLASSES.get(class_name, class_name)
        try:
            cls = getattr(module, class_name, None)
        except Exception:  # a lazy module that cannot import the name (missing optional backend)
            cls = None
        if not isinstance(cls, type):
            raise DiffpruneError(f"{where}: '{key}' names {library}.{class_name}, which this {library} does not have")
        if not issubclass(cls, _component_bases()) or issubclass(cls, diffusers.DiffusionPipeline):
            raise DiffpruneError(f"{where}: '{key}' names {library}.{class_name}, which is not a model, scheduler, "
                                 "tokenizer or image processor")


CODE_SUFFIXES = (".py", ".pyc", ".so")


def check_no_code(folder: Path, files=None) -> None:
    """Refuse a model folder that ships code where diffusers looks for it: diffusers imports
    ``<component>/<library>.py`` (even for library names such as ``diffusers``) on releases before 0.38 without
    asking, and custom pipelines live at the top level. ``files``: the repository's file names, where the
    folder is a partial download. Code deeper down (e.g. ``scripts/``) is never imported and is allowed."""
    names = [str(f) for f in files] if files is not None else \
        [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    code = sorted(n for n in names if n.endswith(CODE_SUFFIXES) and len(PurePosixPath(n).parts) <= 2)
    if code:
        raise DiffpruneError(f"{folder}: refusing a model folder that contains code ({code[0]}); diffprune never "
                             "runs code from a model folder")


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` except the manifest, by relative POSIX path, sorted."""
    sums = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            sums[path.relative_to(folder).as_posix()] = file_sha256(path)
    return sums


# files a loader may read: any of them added after saving would change what loads
_LOADABLE_SUFFIXES = {".safetensors", ".bin", ".json", ".txt", ".model", ".pth", ".pt", ".ckpt", ".msgpack", ".h5",
                      *CODE_SUFFIXES}


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
    # where loaders read: the component folders the manifest lists, and model_index.json
    components = {PurePosixPath(str(rel)).parts[0] for rel in recorded if len(PurePosixPath(str(rel)).parts) > 1}
    root = folder / only if only is not None else folder
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        read = rel == "model_index.json" or path.relative_to(folder).parts[0] in components
        if path.is_file() and read and path.suffix in _LOADABLE_SUFFIXES and rel not in recorded:
            raise DiffpruneError(f"{path} was not saved with this folder, and loading could read it (remove it, "
                                 "or pass --no-verify to load anyway)")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_finite(obj) -> None:
    """Refuse weights holding NaN or infinity (a damaged checkpoint would otherwise give black images)."""
    modules = {"": obj} if is_module(obj) else model_components(obj)
    for component, module in modules.items():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point() or tensor.device.type == "meta":
                continue
            flat = tensor.detach().reshape(-1)
            if not all(bool(torch.isfinite(part).all()) for part in flat.split(1 << 24)):
                where = f"{component} weight" if component else "weight"
                raise DiffpruneError(f"{where} '{name}' holds NaN or infinite values (a damaged checkpoint, or "
                                     "values too large for the dtype asked for); pass --allow-nonfinite to load "
                                     "it anyway")


def check_complete(module, folder: Path) -> None:
    """Refuse a folder whose weight files lack tensors the model expects.

    diffusers and transformers fill missing weights with random values and only log a warning; a pruned or
    hand-edited folder must never load that way.
    """
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return  # pickle-era .bin weights: no cheap way to list keys; the libraries check shapes
    stored: set[str] = set()
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                stored.update(handle.keys())
        except Exception as e:  # safetensors raises its own types for truncated or garbled files
            raise DiffpruneError(f"{file} is not a readable safetensors file ({first_line(e, 160)})") from None
    aliases: dict[object, list[str]] = {}  # tied weights (T5's embed_tokens = shared) are saved under one name
    for key, tensor in module.state_dict(keep_vars=True).items():
        ident = (tensor.data_ptr(), tensor.shape, tensor.dtype) if tensor.numel() else key
        aliases.setdefault(ident, []).append(key)
    missing = [names[0] for names in aliases.values() if not any(k in stored for k in names)]
    if missing:
        raise DiffpruneError(f"{folder}: {len(missing)} weights are missing from the saved files "
                             f"(e.g. '{missing[0]}'); loading would silently use random values")
