"""Save a pipeline atomically: a diffusers folder plus diffprune's manifest (history, SHA-256 of every file),
with components in diffprune's own formats where they were pruned (bitmask weights, layer-pruned U-Nets)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from diffprune._fs import MANIFEST, staged_dir
from diffprune.anatomy import denoiser_of, sparse_kernel_weights
from diffprune.archs.family import detect_family
from diffprune.errors import DiffpruneError
from diffprune.formats import state_format, structure_formats, weights_format_options
from diffprune.integrity import checksums
from diffprune.measure.runtime import applied_runtime_patches
from diffprune.io import FORMAT_VERSION, input_folder


def save(pipe, out_dir: str | os.PathLike, *, overwrite: bool = False, note: str | None = None,
         weights_format: str = "dense") -> Path:
    """Save ``pipe`` as a diffusers folder (safetensors) plus a ``diffprune.json`` manifest; return the path.

    ``weights_format="dense"`` writes a folder that loads with stock ``DiffusionPipeline.from_pretrained``
    (unless the U-Net is layer-pruned in a way its configuration cannot describe: then ``unet/`` is in the
    ``diffprune-layers`` format); ``"bitmask"`` stores the text encoders and U-Net in diffprune's sparse format
    (see :mod:`diffprune.weights.storage`; files shrink with sparsity). Folders in diffprune's own formats
    load with :func:`load` only, refuse stock loading with a clear error, and carry a README.md saying so.
    The manifest records a SHA-256 of every file. The folder is built in a hidden sibling and renamed into
    place, so a failure leaves nothing behind.
    """
    options = weights_format_options()
    if weights_format not in options:
        raise DiffpruneError(f"unknown weights format '{weights_format}' (choose {' or '.join(options)})")
    from diffprune import __version__

    family = detect_family(pipe)
    sparse = sparse_kernel_weights(pipe)
    if sparse:
        raise DiffpruneError(f"{sparse[0]} holds a semi-structured sparse GPU weight: call "
                             "diffprune.weights.semistructured.remove first (the saved weights are the dense ones)")
    if any(p.device.type == "meta" for p in denoiser_of(pipe).parameters()):
        raise DiffpruneError("this pipeline was built on the meta device and has no weights to save")
    info = dict(getattr(pipe, "_diffprune", None) or {})
    history = list(info.get("history", []))
    if note:
        history.append({"step": "save", "note": note})
    manifest = {"format": "diffprune", "format_version": FORMAT_VERSION, "diffprune_version": __version__,
                "family": family.value, "source": info.get("source"), "history": history,
                "weights_format": weights_format}
    runtime = applied_runtime_patches(denoiser_of(pipe))
    if runtime:  # e.g. token pruning: load re-applies it
        manifest["runtime_patches"] = runtime
    with staged_dir(out_dir, overwrite=overwrite, protect=[input_folder(pipe)]) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        own_formats = {}
        for name, module in _modules(pipe).items():
            for fmt in structure_formats():
                if fmt.applies(module) and fmt.save(module, staging / name) == fmt.name:
                    own_formats[name] = fmt.name
        state = state_format(weights_format)
        if state is not None:
            for name in state.components:
                module = getattr(pipe, name, None)
                if module is not None:
                    state.save(module, staging / name, name, history)
                    own_formats[name] = " + ".join(filter(None, [own_formats.get(name), state.name]))
        if own_formats:
            (staging / "README.md").write_text(_own_format_readme(own_formats), encoding="utf-8")
        _drop_load_paths(staging)
        manifest["files"] = checksums(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir).expanduser().resolve()


def _drop_load_paths(folder: Path) -> None:
    """Remove the path the model was loaded from (``_name_or_path``) from the saved configs: it would leak a
    local path (a home folder, the Hub cache) and make the same model saved from two places differ in bytes."""
    configs = [f for f in sorted(folder.rglob("*.json"))
               if f.name in ("config.json", "model_index.json") or f.name.endswith("_config.json")]
    for file in configs:
        data = json.loads(file.read_text(encoding="utf-8"))
        if isinstance(data, dict) and {"_name_or_path", "name_or_path"} & data.keys():
            data = {k: v for k, v in data.items() if k not in ("_name_or_path", "name_or_path")}
            file.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _own_format_readme(formats: dict[str, str]) -> str:
    lines = "\n".join(f"- `{name}/`: {fmt}" for name, fmt in formats.items())
    return f"""# A pipeline saved by diffprune

These components are stored in diffprune's own formats, which stock diffusers cannot read:

{lines}

Load the folder with diffprune (`pip install diffprune`):

```python
import diffprune
pipe = diffprune.load("path/to/this/folder")   # a regular diffusers pipeline
```

`DiffusionPipeline.from_pretrained` on this folder fails with "no file named diffusion_pytorch_model.safetensors"
(or "model.safetensors") for the components above. To get a folder stock diffusers loads, save it again with
`diffprune.save(pipe, out, weights_format="dense")`; a layer-pruned U-Net whose removals its configuration
cannot describe always needs diffprune. `diffprune.json` records what was done and a SHA-256 of every file.
"""


def _modules(pipe) -> dict:
    return {name: getattr(pipe, name) for name in pipe.components
            if isinstance(getattr(pipe, name, None), nn.Module)}
