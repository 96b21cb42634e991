"""The model source every ``diffprune`` command takes: its options, and loading it with them."""

from __future__ import annotations

import argparse

#: the architectures ``random:<arch>`` builds, by kind (``diffprune.archs.available()``, which imports torch;
#: a test keeps the two equal)
RANDOM_ARCHS = {
    "U-Nets": ("sd15", "sd21", "sdxl"),
    "transformers": ("pixart-sigma", "sd3-medium", "sd35-medium", "sd35-large", "flux-schnell", "flux-dev",
                     "sana-600m", "sana-1600m"),
    "test variants": ("tiny-sd", "tiny-sdxl", "tiny-pixart", "tiny-sd3", "tiny-sd35", "tiny-flux", "tiny-sana"),
}

# options that name something the command reads: no output may overlap them
_INPUT_OPTIONS = ("config", "recipe", "calib_prompts", "prompts_file", "reference", "reference_images", "inception_weights",
                  "clip_model", "pickscore_model", "pickscore_processor")


def add_source_options(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    p.add_argument("source", metavar="SOURCE", **({"nargs": "?"} if optional else {}),
                   help="Hub id, local diffusers folder, single-file checkpoint, 'shapes' or 'shapes-dit' (the "
                        "bundled testbeds), or random:<arch> ("
                        + "; ".join(f"{kind} {', '.join(names)}" for kind, names in RANDOM_ARCHS.items()) + ")")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="load weights in this precision")
    p.add_argument("--config", help="for single-file checkpoints: diffusers folder or Hub id with matching configs")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the SHA-256 check of a folder diffprune saved (faster for very large models)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="load weights that hold NaN or infinity instead of refusing them")


def load_source(args, source: str | None = None, **kwargs):
    """``diffprune.load`` of ``source`` (default: the command's SOURCE) with the source options every command
    shares (``--dtype``, ``--config``, ``--no-verify``, ``--allow-nonfinite``)."""
    from diffprune import load

    return load(args.source if source is None else source, dtype=args.dtype, config=args.config,
                verify=not args.no_verify, allow_nonfinite=args.allow_nonfinite, **kwargs)


def input_paths(args) -> list[str]:
    """Everything a command reads (the source and every input option it has), for the output checks; model
    sources count with the folders their loading reads (:func:`diffprune.io.read_paths`)."""
    from diffprune.io import read_paths

    values = [args.source, *(getattr(args, name, None) for name in _INPUT_OPTIONS), *(getattr(args, "recipes", None) or [])]
    return [p for value in values if value for p in read_paths(value)]
