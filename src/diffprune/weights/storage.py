"""Sparse checkpoints that really shrink: a bitmask plus the packed non-zero values, in safetensors.

Format ``diffprune-bitmask`` version 1, one file ``diffprune_sparse.safetensors`` per component folder, next to
the component's usual ``config.json``; or, for a component too large for one file, shards
``diffprune_sparse-00001-of-0000N.safetensors`` listed by ``diffprune_sparse.safetensors.index.json`` (the
layout of diffusers' sharded checkpoints: ``{"metadata": {...}, "weight_map": {tensor name: shard}}``), each shard
a complete file of this format for the tensors it holds. In each file:

- a tensor stored dense keeps its name;
- a sparse tensor ``W`` becomes ``W.__values__`` (its non-zero entries, row-major, in the original dtype) and
  ``W.__mask__`` (uint8, one bit per entry of the flattened tensor, least significant bit first);
- the header's ``__metadata__`` holds ``{"format": "diffprune-bitmask", "version": "1", "sparse": JSON}``
  where the JSON maps each sparse name to ``{"shape": [...], "layout": "bitmask" | "N:M"}``.

An ``N:M`` tensor stores exactly N values per M weights, so its values form a ``[rows, cols * N / M]``
matrix (the layout semi-structured kernels expect) and the mask has exactly N bits set per group.
A tensor is stored sparse only when that is smaller: fp16 costs ``2 * (1 - s) + 1/8`` bytes per weight against
2 dense. "Non-zero" means any bit set, so ``-0.0`` survives the round trip: loading is bit-exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from diffprune.errors import DiffpruneError, first_line

SPARSE_FILE = "diffprune_sparse.safetensors"
SPARSE_INDEX = "diffprune_sparse.safetensors.index.json"
FORMAT = "diffprune-bitmask"
VERSION = "1"
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((packed[:, None] >> shifts) & 1).reshape(-1)[:numel].bool()


def _nonzero_bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT_VIEW[t.element_size()]) != 0


def _nm_mask(nonzero: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """A mask with exactly ``n`` bits per ``m`` consecutive entries of each row covering every non-zero, or None."""
    rows = nonzero.reshape(nonzero.shape[0], -1)
    if rows.shape[1] % m:
        return None
    groups = rows.reshape(rows.shape[0], -1, m)
    count = groups.sum(-1, keepdim=True)
    if bool((count > n).any()):
        return None
    # fill groups with fewer than n non-zeros using their first zero positions
    fill_rank = (~groups).cumsum(-1)
    extra = (~groups) & (fill_rank <= (n - count))
    return (groups | extra).reshape(nonzero.shape)


def encode(state: dict[str, torch.Tensor], pattern: tuple[int, int] | None = None
           ) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict] = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        dense_bytes = t.numel() * t.element_size()
        if t.numel() < 64 or t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            tensors[name] = t
            continue
        mask = _nonzero_bits(t)
        layout = "bitmask"
        if pattern is not None and t.dim() >= 2:
            nm_mask = _nm_mask(mask, *pattern)
            if nm_mask is not None:
                mask, layout = nm_mask, f"{pattern[0]}:{pattern[1]}"
        kept = int(mask.sum())
        if kept * t.element_size() + (t.numel() + 7) // 8 >= dense_bytes:
            tensors[name] = t
            continue
        values = t.reshape(-1)[mask.reshape(-1)]
        if layout != "bitmask":
            values = values.reshape(t.shape[0], -1)
        tensors[f"{name}.__values__"] = values.contiguous()
        tensors[f"{name}.__mask__"] = pack_bits(mask)
        sparse[name] = {"shape": list(t.shape), "layout": layout}
    return tensors, {"format": FORMAT, "version": VERSION, "sparse": json.dumps(sparse)}


def _corrupt(file: Path, why: str) -> DiffpruneError:
    return DiffpruneError(f"{file} is damaged ({why}); re-save the model")


def decode(file: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``diffprune-bitmask`` file back into a dense state dict (bit-exact)."""
    from safetensors import safe_open

    file = Path(file)
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for truncated or garbled files
        raise _corrupt(file, f"not a readable safetensors file: {first_line(e, 160)}") from None
    if meta.get("format") != FORMAT:
        raise _corrupt(file, f"its header does not name the {FORMAT} format")
    if meta.get("version") != VERSION:
        raise DiffpruneError(f"{file} uses {FORMAT} version {meta.get('version')}; this diffprune reads version "
                             f"{VERSION} (upgrade diffprune)")
    try:
        sparse = json.loads(meta.get("sparse", ""))
    except json.JSONDecodeError:
        raise _corrupt(file, "its sparse-tensor table is not valid JSON") from None
    if not isinstance(sparse, dict) or not all(isinstance(v, dict) for v in sparse.values()):
        raise _corrupt(file, "its sparse-tensor table is not a table of tensors")
    state = {k: v for k, v in raw.items() if not k.endswith((".__values__", ".__mask__"))}
    for name, info in sparse.items():
        values, packed = raw.get(f"{name}.__values__"), raw.get(f"{name}.__mask__")
        if values is None or packed is None:
            raise _corrupt(file, f"'{name}' lacks its values or mask")
        shape = tuple(info.get("shape", ()))
        numel = 1
        for d in shape:
            numel *= d
        if packed.numel() != (numel + 7) // 8:
            raise _corrupt(file, f"the mask of '{name}' has {packed.numel()} bytes, expected {(numel + 7) // 8}")
        mask = unpack_bits(packed, numel)
        if int(mask.sum()) != values.numel():
            raise _corrupt(file, f"'{name}' has {values.numel()} values for {int(mask.sum())} mask bits")
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[mask] = values.reshape(-1)
        state[name] = dense.view(shape)
    return state


def sparse_shards(folder: str | Path) -> list[tuple[Path, set[str] | None]]:
    """The sparse files of a component folder, each with the tensor names its index says it holds (``None`` for
    the one-file layout): the one file, or the shards the index lists, in order; ``[]`` for neither."""
    folder = Path(folder)
    single, index = folder / SPARSE_FILE, folder / SPARSE_INDEX
    if single.is_file() and index.is_file():
        raise DiffpruneError(f"{folder} holds both {SPARSE_FILE} and {SPARSE_INDEX}; keep the one diffprune "
                             "wrote last and remove the other")
    if single.is_file():
        return [(single, None)]
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise _corrupt(index, "not a JSON index with a weight_map") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) and v == Path(v).name and v.endswith(".safetensors") and v != SPARSE_FILE
            for v in weight_map.values()):
        raise _corrupt(index, "its weight_map does not map tensors to shard files in the folder")
    held: dict[str, set[str]] = {}
    for tensor, name in weight_map.items():
        held.setdefault(name, set()).add(tensor)
    shards: list[tuple[Path, set[str] | None]] = []
    for name in sorted(held):
        try:
            present = (folder / name).is_file()
        except (OSError, ValueError):  # a name the file system cannot hold
            present = False
        if not present:
            raise _corrupt(index, f"it lists {name[:80]}, which is not in the folder")
        shards.append((folder / name, held[name]))
    return shards


def _read_shard(file: Path, listed: set[str] | None) -> dict[str, torch.Tensor]:
    """One sparse file, decoded, checked against the tensor names the folder's index gives it."""
    state = decode(file)
    if listed is not None and set(state) != listed:
        odd = min(set(state) ^ listed)
        raise _corrupt(file.parent / SPARSE_INDEX, f"it does not list what {file.name} holds (e.g. '{odd}')")
    return state


def read_folder(folder: str | Path) -> dict[str, torch.Tensor]:
    """All the weights of a sparse component folder (one file or shards), dense and bit-exact."""
    state: dict[str, torch.Tensor] = {}
    for file, listed in sparse_shards(folder):
        state.update(_read_shard(file, listed))
    return state


def save_sparse_file(state: dict[str, torch.Tensor], file: str | Path,
                     pattern: tuple[int, int] | None = None) -> int:
    """Write ``state`` as one file of this format (canonical header); returns how many tensors went sparse."""
    from safetensors.torch import save_file

    tensors, metadata = encode(state, pattern)
    save_file(tensors, str(file), metadata=metadata)
    canonical_header(file)
    return len(json.loads(metadata["sparse"]))


def write_shard_index(file: str | Path, weight_map: dict[str, str], **metadata) -> None:
    """Write the index of a sharded component in diffusers' layout (``weight_map``: tensor name -> shard file
    name in the index's folder); ``metadata`` joins the shards' ``total_size``."""
    file = Path(file)
    total = sum((file.parent / name).stat().st_size for name in set(weight_map.values()))
    file.write_text(json.dumps({"metadata": {**metadata, "total_size": total},
                                "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n", encoding="utf-8")


def _library_class(folder: Path):
    import diffusers
    import transformers

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffpruneError(f"cannot read {folder / 'config.json'}: {e}") from None
    if not isinstance(config, dict):
        raise DiffpruneError(f"{folder / 'config.json'} does not hold a JSON object")
    name = config.get("_class_name") or (config.get("architectures") or [None])[0]
    cls = getattr(diffusers, name or "", None) or getattr(transformers, name or "", None)
    if cls is None:
        raise DiffpruneError(f"{folder}: cannot tell which model class config.json describes ({name})")
    return cls


def load_component(folder: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """Build the component in ``folder`` from its config and fill it from its sparse file (strictly).

    With ``dtype=None`` the dtype follows the libraries' own rule for dense folders, so a sparse and a dense
    save of one pipeline load alike.
    """
    from accelerate import init_empty_weights

    folder = Path(folder)
    cls = _library_class(folder)
    shards = sparse_shards(folder)
    if not shards:
        raise DiffpruneError(f"{folder} holds no {SPARSE_FILE} and no {SPARSE_INDEX}")
    if dtype is None and hasattr(cls, "load_config"):
        dtype = torch.float32  # what diffusers gives a dense folder loaded without a dtype (transformers: as stored)
    try:
        with init_empty_weights(include_buffers=False):
            if hasattr(cls, "load_config"):  # diffusers
                model = cls.from_config(cls.load_config(folder))
            else:  # transformers
                model = cls(cls.config_class.from_pretrained(folder))
    except Exception as e:  # a user's config: any failure to build from it is reported, not raised
        raise DiffpruneError(f"cannot build the {cls.__name__} of {folder}: {first_line(e, 160)}") from None
    expected = set(model.state_dict())
    missing_keys: set[str] = set()
    for number, (file, listed) in enumerate(shards):  # one shard in memory at a time, besides the model
        state = _read_shard(file, listed)
        if dtype is not None:  # cast the tensors, not the module: loading then needs no dtype conversion pass
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        state = _match_prefix(state, expected)
        try:
            loaded = model.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise _corrupt(file, f"its tensors do not match the model: {lines[-1][:160]}") from None
        if loaded.unexpected_keys:
            raise _corrupt(file, f"it holds tensors the model does not have, e.g. '{loaded.unexpected_keys[0]}'")
        missing_keys = set(loaded.missing_keys) if number == 0 else missing_keys & set(loaded.missing_keys)
        del state
    if hasattr(model, "tie_weights"):  # tied weights (T5's shared embedding) are stored once: tie them again
        model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = sorted(k for k in missing_keys if k not in params or params[k].device.type == "meta")
    if missing or any(p.device.type == "meta" for p in model.parameters()):
        where = shards[0][0] if len(shards) == 1 else folder / SPARSE_INDEX
        raise _corrupt(where, f"some weights are missing (e.g. '{(missing or ['?'])[0]}')")
    return model.eval().requires_grad_(False)


def tied_names(module: nn.Module) -> list[list[str]]:
    """Groups of state-dict names that are one tensor (tied weights), each in state-dict order."""
    groups: dict[int, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _match_prefix(state: dict, expected: set[str]) -> dict:
    """Text-encoder keys with or without the ``text_model.`` level (transformers 5 dropped it in memory), so a
    file written under one transformers major version loads under the other. ``state`` may be one shard: it
    matches when all its keys are expected ones."""
    if set(state) <= expected:
        return state
    prefix = "text_model."
    stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    if set(stripped) <= expected:
        return stripped
    added = {k if k.startswith(prefix) else prefix + k: v for k, v in stripped.items()}
    return added if set(added) <= expected else state


def save_component(module: nn.Module, folder: str | Path, pattern: tuple[int, int] | None = None) -> dict:
    """Replace the dense weight files in ``folder`` (a component saved by ``save_pretrained``) by a sparse file.

    Returns ``{"sparse_tensors": n, "bytes": size}``.
    """
    folder = Path(folder)
    state = module.state_dict()
    for names in tied_names(module):  # store a tied tensor once, under its first name
        for name in names[1:]:
            state.pop(name)
    for glob in _WEIGHT_FILES:
        for f in folder.glob(glob):
            f.unlink()
    sparse = save_sparse_file(state, folder / SPARSE_FILE, pattern)
    return {"sparse_tensors": sparse, "bytes": (folder / SPARSE_FILE).stat().st_size}


def canonical_header(file: str | Path) -> None:
    """Rewrite a safetensors header with its keys sorted, in place.

    safetensors writes ``__metadata__`` from a hash map whose order changes between processes; sorting makes
    the same tensors and metadata give the same bytes (the data section and its offsets are unchanged).
    """
    file = Path(file)
    with open(file, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:  # cannot happen for a reordering of the same compact JSON; refuse rather than corrupt
            raise RuntimeError(f"{file}: the sorted header is longer than the original")
        f.seek(8)
        f.write(text + b" " * (size - len(text)))  # the format pads headers with spaces


def is_sparse_folder(folder: str | Path) -> bool:
    return (Path(folder) / SPARSE_FILE).is_file() or (Path(folder) / SPARSE_INDEX).is_file()


def nm_pattern(history: list[dict], component: str) -> tuple[int, int] | None:
    """The N:M pattern ``component`` was last pruned with according to a pipeline's history (so storage can use
    the N:M layout), or ``None``."""
    found = None
    for step in history:
        pattern = str(step.get("pattern", ""))
        if step.get("step") == "prune-weights" and step.get("component") == component and ":" in pattern:
            n, m = pattern.split(":")
            found = (int(n), int(m))
    return found


def save_for_pipeline(module: nn.Module, folder: Path, component: str, history: list) -> None:
    """:func:`save_component` with the N:M layout the pipeline's history records for ``component``."""
    save_component(module, folder, nm_pattern(history, component))
