"""Load any supported source (Stable Diffusion U-Nets and diffusion transformers) into a diffusers pipeline (saving: :mod:`diffprune.saving`).

Sources: a Hub id (from the local cache when offline), a local diffusers folder, a single-file
checkpoint (``.safetensors``/``.ckpt``), a folder saved by diffprune, a bare component folder (e.g. a
``unet/``), ``shapes`` for the trained testbed shipped with diffprune, and ``random:<arch>`` for seeded
random weights of a published architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from diffprune import archs
from diffprune._fs import MANIFEST
from diffprune.anatomy import model_components
from diffprune.archs.family import SUPPORTED_PIPELINES, detect_family
from diffprune.errors import DiffpruneError, first_line
from diffprune.formats import load_stored_component
from diffprune.hub import HUB_ID, checked_hub_index, find_hub_index, load_hub, offline
from diffprune.integrity import (
    check_complete,
    check_finite,
    check_model_index,
    check_no_code,
    read_json,
    verify_checksums,
)
from diffprune.measure.runtime import reapply_runtime_patches
from diffprune.precision import dtype_kwargs, one_precision, parse_dtype

FORMAT_VERSION = 1
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def parse_device(device: str | torch.device | None) -> torch.device | None:
    """Validate a device name up front (a typo or a missing GPU is a user error, not a traceback)."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DiffpruneError(f"unknown device '{device}' (use cpu, cuda, cuda:N, mps or meta)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DiffpruneError(f"device '{device}' asked for, but this PyTorch sees no CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DiffpruneError(f"device '{device}' does not exist ({torch.cuda.device_count()} CUDA GPUs)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DiffpruneError("device 'mps' asked for, but MPS is not available")
    return dev


def _finish(pipe, *, source: str, component: str | None, device, dtype=None):
    detect_family(pipe)
    if dtype is None:
        one_precision(pipe)
    if device is not None and device.type != "cpu":
        pipe.to(device)
    info = dict(getattr(pipe, "_diffprune", None) or {})
    info.setdefault("source", source)
    info.setdefault("history", [])
    pipe._diffprune = info
    if component is None:
        return pipe
    part = getattr(pipe, component, None)
    if part is None:
        names = sorted(k for k, v in pipe.components.items() if v is not None)
        raise DiffpruneError(f"the pipeline has no component '{component}' (it has: {', '.join(names)})")
    return part


def _load_component_folder(folder: Path, config: dict, dtype):
    import diffusers
    import transformers

    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    name = name if isinstance(name, str) else None
    cls = (getattr(diffusers, name, None) or getattr(transformers, name, None)) if name else None
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise DiffpruneError(f"{folder} holds a '{name}', which diffprune cannot load")
    try:
        model = cls.from_pretrained(folder)
    except Exception as e:  # a user's folder: any failure to parse it is reported, not raised
        raise DiffpruneError(f"cannot load the {name} in {folder}: {first_line(e)}") from None
    check_complete(model, folder)
    if dtype is not None:
        model.to(dtype)
    return model.eval().requires_grad_(False)


def _load_pipeline_folder(folder: Path, dtype, verify: bool = True, runtime_patches: bool = True,
                          overrides: dict | None = None):
    from diffusers import DiffusionPipeline

    index = read_json(folder / "model_index.json")
    cls_name = index.get("_class_name")
    if cls_name not in SUPPORTED_PIPELINES:
        raise DiffpruneError(f"unsupported model: {folder} is a {cls_name}; diffprune supports "
                             f"{', '.join(SUPPORTED_PIPELINES)} folders")
    check_model_index(index, folder / "model_index.json")
    check_no_code(folder)
    manifest = _read_manifest(folder)
    if manifest is not None and verify:
        verify_checksums(folder, manifest)
    stored = dict(overrides or {})  # components already loaded: diffusers does not load them again
    for name in _listed_components(index):
        module = None if name in stored else load_stored_component(folder / name, dtype)
        if module is not None:
            stored[name] = module
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, **stored, **dtype_kwargs(dtype))
    except Exception as e:  # a user's folder: any failure to parse it is reported, not raised
        raise DiffpruneError(f"cannot load the pipeline in {folder}: {first_line(e)}") from None
    for name, module in model_components(pipe).items():
        if name not in stored:  # components in diffprune's formats were loaded strictly already
            check_complete(module, folder / name)
    if manifest is not None:
        pipe._diffprune = {"source": str(folder), "history": manifest.get("history", [])}
        if runtime_patches:
            reapply_runtime_patches(pipe, manifest.get("runtime_patches"), folder)
    return pipe


def _read_manifest(folder: Path) -> dict | None:
    """The ``diffprune.json`` of a folder diffprune saved (checked), or None for any other folder."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return None
    manifest = read_json(manifest_path)
    if manifest.get("format") != "diffprune":
        return None  # e.g. a report's manifest: not a saved pipeline
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise DiffpruneError(f"{manifest_path} has no valid format_version; the folder is damaged")
    if version > FORMAT_VERSION:
        raise DiffpruneError(f"{folder} was saved by a newer diffprune (format {version}); please upgrade")
    return manifest


def _listed_components(index: dict) -> list[str]:
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]


def _single_file_pipeline(path: Path, keys: list[str]) -> str:
    """The pipeline class a single-file checkpoint belongs to, read from its key names (the original training
    repositories' layouts, which diffusers' ``from_single_file`` converts): SD-1/2 and SD-XL, SD3/3.5 (``joint_blocks``),
    Flux (``double_blocks``, a transformer-only file or a whole checkpoint) and Sana (a transformer: Mix-FFN
    ``mlp.inverted_conv`` in its ``blocks``)."""
    bare = [k.removeprefix("model.diffusion_model.") for k in keys]
    if any(k.startswith("joint_blocks.") for k in bare):
        return "StableDiffusion3Pipeline"
    if any(k.startswith("double_blocks.") for k in bare):
        return "FluxPipeline"
    if any(k.startswith("blocks.") and ".mlp.inverted_conv." in k for k in bare):
        return "SanaPipeline"
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise DiffpruneError(f"{path} is not a checkpoint diffprune can read (no Stable Diffusion "
                             "'model.diffusion_model.' weights, no SD3 'joint_blocks', no Flux 'double_blocks', "
                             "no Sana blocks); PixArt loads from diffusers folders or Hub ids")
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "StableDiffusionXLPipeline"
    return "StableDiffusionPipeline"


def _load_single_file(path: Path, dtype, config: str | None):
    import diffusers

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise DiffpruneError(f"{path} is not a readable safetensors file: {first_line(e)}") from None
    else:
        try:
            state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
        except Exception as e:
            raise DiffpruneError(f"{path} is not a readable checkpoint: {first_line(e)}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else None
        if not isinstance(state, dict):
            raise DiffpruneError(f"{path} does not hold a state dict")
        keys = [str(k) for k in state]
    cls_name = _single_file_pipeline(path, keys)
    if cls_name == "SanaPipeline":
        return _load_sana_file(path, dtype, config)
    cls = getattr(diffusers, cls_name)
    kwargs = dict(dtype_kwargs(dtype), local_files_only=offline() or config is not None)
    if config is not None:  # diffusers reads the component classes from its model_index.json: check it first
        folder = Path(config).expanduser()
        if (folder / "model_index.json").is_file():
            check_model_index(read_json(folder / "model_index.json"), folder / "model_index.json")
            check_no_code(folder)
        elif HUB_ID.match(config):  # a cached Hub id is checked; one not cached diffusers reports below, offline
            checked_hub_index(config, None, online=False)
        kwargs["config"] = config
    try:
        return cls.from_single_file(str(path), **kwargs)
    except Exception as e:  # diffusers raises several unrelated types for unreadable or unknown checkpoints
        raise DiffpruneError(
            f"cannot load single-file checkpoint {path}: {first_line(e)} — the component configs and "
            "tokenizer come from the matching Hub model; when offline pass config=<diffusers folder or cached "
            "Hub id of the same architecture> (CLI: --config)"
        ) from None


def _load_sana_file(path: Path, dtype, config: str | None):
    """A Sana transformer checkpoint (diffusers converts only the transformer from one file): the rest of the
    pipeline, and the transformer's config, come from ``config``, loaded with every check a folder or Hub id gets
    (its own transformer is never loaded)."""
    from diffusers import SanaTransformer2DModel

    if config is None:
        raise DiffpruneError(f"{path} holds a Sana transformer only; pass config=<a Sana diffusers folder or "
                             "Hub id> for its config and the rest of the pipeline (CLI: --config)")
    folder = Path(config).expanduser()
    if folder.name == "model_index.json" and folder.is_file():
        folder = folder.parent
    if (folder / "model_index.json").is_file():  # every check a folder gets, before anything of it is read
        index = read_json(folder / "model_index.json")
        if index.get("_class_name") == "SanaPipeline":
            check_model_index(index, folder / "model_index.json")
            check_no_code(folder)
            manifest = _read_manifest(folder)
            if manifest is not None:
                verify_checksums(folder, manifest)
        where, revision, online = str(folder), None, False
    elif HUB_ID.match(config):
        revision, index, online = find_hub_index(config)
        where = config
    else:
        raise DiffpruneError(f"config {config} is neither a diffusers pipeline folder nor a Hub id")
    if index.get("_class_name") != "SanaPipeline":
        raise DiffpruneError(f"{path} is a Sana transformer, but config {config} is a {index.get('_class_name')}")
    kwargs = dict(config=where, subfolder="transformer", config_revision=revision,
                  **dtype_kwargs(dtype if dtype is not None else torch.float32))  # diffusers' own default
    # a Hub config cached without its transformer/config.json: the Hub completes it, where it may be asked
    attempts = (False, True) if revision is not None and not online and not offline() else (online,)
    for i, attempt_online in enumerate(attempts):
        try:
            transformer = SanaTransformer2DModel.from_single_file(str(path), local_files_only=not attempt_online,
                                                                  **kwargs)
            break
        except Exception as e:  # shapes that do not match the config, a truncated file, a config not cached
            if i + 1 == len(attempts):
                raise DiffpruneError(f"cannot load the Sana transformer in {path} with the config of {config}: "
                                     f"{first_line(e)}") from None
    overrides = {"transformer": transformer}
    if revision is None:
        pipe = _load_pipeline_folder(folder, dtype, verify=False, runtime_patches=False, overrides=overrides)
    else:
        pipe = load_hub(config, dtype, None, overrides=overrides, revision=revision)
    pipe._diffprune = {"source": str(path), "history": []}  # not the config's own record
    return pipe


def load(source: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
         device: str | torch.device | None = None, component: str | None = None, seed: int = 0,
         config: str | None = None, cache_dir: str | None = None, verify: bool = True,
         allow_nonfinite: bool = False, runtime_patches: bool = True):
    """Load ``source`` as a diffusers pipeline (or only ``component`` of it, e.g. ``"unet"``).

    ``random:<arch>`` builds seeded random weights (``device="meta"`` allocates nothing: for FLOPs and
    parameter counts). ``config`` is only used for single-file checkpoints: a diffusers folder or Hub id
    whose configs and tokenizer match the checkpoint. ``cache_dir`` overrides the Hugging Face cache.
    Without ``dtype``, models load as diffusers and transformers load them; where those disagree (a text
    encoder saved in fp16 stays fp16 in transformers, diffusers' models come in fp32), every model is brought
    to fp32. ``"shapes"`` loads the trained testbed. Raises :class:`DiffpruneError` with one clear line
    for anything the user can fix.

    Every ``model_index.json`` entry must name a diffusers or transformers class (code inside a model folder
    is never imported). A folder diffprune saved is checked against the SHA-256 sums in its manifest unless
    ``verify=False``. Weights holding NaN or infinity are refused unless ``allow_nonfinite=True``. Run-time
    patches the pipeline carried when diffprune saved it (token pruning) are applied again unless
    ``runtime_patches=False``.
    """
    pipe = _load_source(source, dtype=dtype, device=device, component=component, seed=seed, config=config,
                        cache_dir=cache_dir, verify=verify, runtime_patches=runtime_patches)
    if not allow_nonfinite and not str(source).startswith("random:"):
        check_finite(pipe)
    return pipe


def _load_source(source, *, dtype, device, component, seed, config, cache_dir, verify, runtime_patches=True):
    dtype = parse_dtype(dtype)
    device = parse_device(device)
    text = str(source)
    if text in ("shapes", "shapes-dit"):  # the trained testbeds shipped with diffprune (fp16 on disk, fp32 default)
        from diffprune.testbed.assets import dit_testbed_folder, quiet_text_encoder_type, testbed_folder

        folder = testbed_folder() if text == "shapes" else dit_testbed_folder()
        with quiet_text_encoder_type():
            pipe = _load_pipeline_folder(folder, dtype or torch.float32)
        return _finish(pipe, source=text, component=component, device=device)
    if text.startswith("random:"):
        pipe = archs.build_pipeline(text.split(":", 1)[1], device=device or "cpu", dtype=dtype, seed=seed)
        return _finish(pipe, source=text, component=component, device=None)
    if device is not None and device.type == "meta":
        raise DiffpruneError("the meta device is only for random:<arch> sources (a checkpoint has real weights)")
    path = Path(text).expanduser()
    if path.is_file():
        if path.name in ("config.json", "model_index.json"):
            return _load_source(path.parent, dtype=dtype, device=device, component=component, seed=seed,
                                config=config, cache_dir=cache_dir, verify=verify, runtime_patches=runtime_patches)
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise DiffpruneError(f"{path} is not a checkpoint file ({', '.join(SINGLE_FILE_SUFFIXES)})")
        pipe = _load_single_file(path, dtype, config)
    elif path.is_dir():
        if (path / "model_index.json").is_file():
            pipe = _load_pipeline_folder(path, dtype, verify, runtime_patches)
        elif (path / "config.json").is_file():
            if component is not None:
                raise DiffpruneError(f"{path} holds a single component; do not ask for component '{component}'")
            check_no_code(path)
            parent_manifest = _read_manifest(path.resolve().parent)
            if parent_manifest is not None and verify:
                verify_checksums(path.resolve().parent, parent_manifest, only=path.resolve().name)
            model = load_stored_component(path, dtype)
            if model is None:
                model = _load_component_folder(path, read_json(path / "config.json"), dtype)
            return model.to(device) if device else model
        else:
            raise DiffpruneError(f"{path} is not a diffusers model folder (no model_index.json or config.json)")
    elif HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        pipe = load_hub(text, dtype, cache_dir)
    else:
        raise DiffpruneError(f"no such file or folder: {text} (and it is not a Hub id like 'org/name')")
    return _finish(pipe, source=text, component=component, device=device, dtype=dtype)


def read_paths(source: str | os.PathLike) -> list[str]:
    """The paths loading ``source`` reads, for output checks: the source itself, the folder of a
    ``model_index.json``/``config.json`` given as the source, and the pipeline folder around a component folder
    (its manifest and sums are read too)."""
    paths = [str(source)]
    path = Path(source).expanduser()
    if path.is_file() and path.name in ("model_index.json", "config.json"):
        path = path.parent
        paths.append(str(path))
    if path.is_dir() and any((path.parent / name).is_file() for name in ("model_index.json", MANIFEST)):
        paths.append(str(path.parent))
    return paths


def input_folder(pipe) -> str | None:
    """The local folder a pipeline was loaded from, if any (outputs must never be written into it)."""
    for candidate in ((getattr(pipe, "_diffprune", None) or {}).get("source"), getattr(pipe, "name_or_path", None)):
        if candidate and Path(str(candidate)).expanduser().is_dir():
            return str(candidate)
    return None
