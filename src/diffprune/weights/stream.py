"""Magnitude pruning of a model too large for memory, one tensor (or one block) at a time.

FLUX.1-dev's transformer holds 11.9 B parameters: 47.6 GB in fp32, 23.8 GB in bf16, so an in-memory pass does not
fit a 24 GiB machine. Magnitude pruning needs no calibration and no other layer's values, so it can stream: read a
tensor, zero its smallest entries, write it to the output shard, let it go. The model is built on the ``meta``
device only to learn which tensors are prunable (the same targets and per-layer counts as the in-memory
:func:`diffprune.weights.prune`, so both give the same zeros on the same weights); at no time are two copies, or
even one whole copy, in memory.

Sources: a component folder of safetensors files (a diffusers ``transformer/`` or ``unet/``, sharded or not), read
tensor by tensor through memory maps; or ``random:<arch>``, whose denoiser is materialised one top-level block at a
time with seeded random weights (parameters drawn from a generator seeded by the block's name, then each layer's
own ``reset_parameters``, buffers zero; not the same numbers as :func:`diffprune.archs.build_denoiser`). The output is a
component folder with ``config.json`` and, with ``storage="dense"`` (the default), sharded plain safetensors and their
index, which stock ``from_pretrained`` loads; with ``storage="bitmask"``, shards of diffprune's sparse format
(:mod:`diffprune.weights.storage`), whose files shrink with the sparsity and which ``diffprune.load`` reads.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffprune._fs import MANIFEST, staged_dir
from diffprune.errors import DiffpruneError
from diffprune.weights.config import MagnitudeConfig
from diffprune.weights.masks import allocate, apply_mask, select
from diffprune.weights.storage import (
    FORMAT,
    VERSION,
    is_sparse_folder,
    save_sparse_file,
    write_shard_index,
)
from diffprune.weights.targets import find_targets

SHARD_BYTES = 2 * 2**30
STORAGES = ("dense", "bitmask")


@dataclass
class StreamResult:
    out: Path
    params: int
    pruned_weights: int
    zeros: int
    shards: int
    seconds: float

    @property
    def sparsity(self) -> float:
        return self.zeros / self.pruned_weights if self.pruned_weights else 0.0


def _meta_model(source: str):
    import diffusers

    from diffprune import archs

    if source.startswith("random:"):
        return archs.build_denoiser(source.split(":", 1)[1], device="meta"), None
    folder = Path(source).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise DiffpruneError(f"{folder} is not a component folder (no config.json); give e.g. a pipeline's "
                             "transformer/ or unet/ folder, or random:<arch>")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise DiffpruneError(f"{config_file} describes a '{config.get('_class_name')}', not a diffusers model")
    if is_sparse_folder(folder):
        raise DiffpruneError(f"{folder} is stored in diffprune's sparse format; stream the dense folder instead")
    if not sorted(folder.glob("*.safetensors")):
        raise DiffpruneError(f"{folder} holds no safetensors weights (streaming reads safetensors only)")
    with torch.device("meta"):
        model = cls.from_config(cls.load_config(folder))
    return model, folder


def _weight_files(folder: Path) -> list[Path]:
    """The folder's weight files: those its index lists, else the one unsharded file; never a variant
    (``*.fp16.safetensors``) beside them."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    indexes = [i for i in indexes if i.name.count(".") == 3] or indexes  # name.safetensors.index.json
    if indexes:
        weight_map = json.loads(indexes[0].read_text(encoding="utf-8")).get("weight_map", {})
        return [folder / name for name in sorted(set(weight_map.values()))]
    plain = [f for f in sorted(folder.glob("*.safetensors")) if f.name.count(".") == 1]
    return plain or sorted(folder.glob("*.safetensors"))[:1]


def _folder_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)


def _random_tensors(model: nn.Module, seed: int, dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's tensors with seeded random values, one top-level block (ModuleList entry) at a time."""
    units: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        units += [(f"{name}.{i}", c) for i, c in enumerate(child)] if isinstance(child, nn.ModuleList) \
            else [(name, child)]
    direct = {n: p for n, p in model.named_parameters(recurse=False)}
    units += [(n, None) for n in direct]
    for name, unit in units:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        if unit is None:  # a parameter of the model itself
            yield name, (torch.randn(direct[name].shape, generator=gen) * 0.02).to(dtype)
            continue
        live = unit.to_empty(device="cpu")
        with torch.no_grad():
            for p in live.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            for b in live.buffers():  # to_empty leaves buffers uninitialised
                b.zero_()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
                for m in live.modules():
                    if hasattr(m, "reset_parameters") and next(m.parameters(recurse=False), None) is not None:
                        m.reset_parameters()
        for key, tensor in live.state_dict().items():
            yield f"{name}.{key}", tensor.to(dtype)
        unit.to("meta")  # let the block go


def stream_prune(source: str, out, config: MagnitudeConfig, *, dtype: str | torch.dtype | None = None,
                 include_conv: bool = False, seed: int = 0, overwrite: bool = False,
                 shard_bytes: int = SHARD_BYTES, storage: str = "dense", progress: bool = False) -> StreamResult:
    """Magnitude-prune the component ``source`` (a folder or ``random:<arch>``) into the folder ``out``, holding
    at most one tensor (or one block) and one output shard in memory. ``dtype`` converts what is written
    (default: as stored; fp32 for random weights). ``storage`` is ``"dense"`` (plain safetensors shards) or
    ``"bitmask"`` (sparse shards); ``shard_bytes`` bounds a shard's dense size either way."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from diffprune.precision import parse_dtype

    config.validate()
    if storage not in STORAGES:
        raise DiffpruneError(f"unknown storage '{storage}' (choose from {', '.join(STORAGES)})")
    if config.scope != "layer":
        raise DiffpruneError("streamed pruning works one tensor at a time: use scope 'layer'")
    start = time.perf_counter()
    out_dtype = parse_dtype(dtype)
    model, folder = _meta_model(str(source))
    targets = find_targets(model, include_conv=include_conv)
    counts = dict(zip((f"{t.name}.weight" for t in targets), allocate([t.weight.numel() for t in targets],
                                                                       config.sparsity)))
    expected = dict(model.state_dict())
    tensors = _folder_tensors(folder) if folder is not None else _random_tensors(model, seed, out_dtype
                                                                                  or torch.float32)
    index, shard, shard_size, files = {}, {}, 0, []
    zeros = pruned = params = 0
    with staged_dir(out, overwrite=overwrite, protect=[folder]) as staging:
        def flush():
            nonlocal shard, shard_size
            if shard:
                name = f"shard-{len(files) + 1:05d}.safetensors"
                if storage == "bitmask":
                    save_sparse_file(shard, staging / name, config.nm)
                else:
                    save_file(shard, str(staging / name), metadata={"format": "pt"})
                files.append(name)
                index.update({k: name for k in shard})
                shard, shard_size = {}, 0

        bar = tqdm(total=len(expected), desc="streamed magnitude pruning", disable=not progress, unit="tensor")
        for name, tensor in tensors:
            if name not in expected:
                raise DiffpruneError(f"{source}: tensor '{name}' is not part of the model its config describes")
            if not torch.isfinite(tensor).all():
                raise DiffpruneError(f"{source}: tensor '{name}' holds NaN or infinity")
            tensor = tensor.to(out_dtype) if out_dtype is not None else tensor.clone()
            if name in counts:
                with torch.no_grad():
                    apply_mask(tensor, select(tensor.reshape(tensor.shape[0], -1).abs(), counts[name], config.nm))
                pruned += tensor.numel()
                zeros += tensor.numel() - int(torch.count_nonzero(tensor))
            params += tensor.numel()
            shard[name] = tensor.contiguous()
            shard_size += tensor.numel() * tensor.element_size()
            bar.update()
            if shard_size >= shard_bytes:
                flush()
        flush()
        bar.close()
        missing = sorted(set(expected) - set(index))
        if missing:
            raise DiffpruneError(f"{source}: {len(missing)} tensors of the model are missing (e.g. '{missing[0]}')")
        stem = "diffprune_sparse" if storage == "bitmask" else "diffusion_pytorch_model"
        renamed = {old: f"{stem}-{i + 1:05d}-of-{len(files):05d}.safetensors" for i, old in enumerate(files)}
        for old, new in renamed.items():
            (staging / old).rename(staging / new)
        write_shard_index(staging / f"{stem}.safetensors.index.json", {k: renamed[v] for k, v in index.items()},
                          **({"format": FORMAT, "version": VERSION} if storage == "bitmask" else {}))
        model.save_config(staging)
        (staging / MANIFEST).write_text(json.dumps({
            "format": "diffprune-stream", "source": str(source), "method": "magnitude", "pattern": config.pattern,
            "sparsity": config.sparsity, "dtype": str(out_dtype or "as stored"),
            "storage": storage}, indent=2) + "\n", encoding="utf-8")
    return StreamResult(out=Path(out).expanduser().resolve(), params=params, pruned_weights=pruned, zeros=zeros,
                        shards=len(files), seconds=round(time.perf_counter() - start, 3))
