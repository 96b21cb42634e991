"""How closely a run of ``python -m diffprune.testbed.train`` reproduces the committed shapes testbed, tensor by
tensor, while it runs or after it ends; with ``--reference``, also how two finished ``shapes-dit`` runs
(``python -m diffprune.testbed.train_dit``) compare.

Run: python benchmarks/testbed_reproduction.py RUN_DIR [--reference DIR]
``RUN_DIR`` is the run's output folder. A finished run is read from its ``evaluator.safetensors``, ``pipeline/``
and ``training.json``; a run still going is read from its ``checkpoint.pt`` (finished stages, and the diffusion
losses so far). ``--reference`` is the folder to compare with (default: the weights committed with diffprune).
Prints, per model, how many tensors are bit-identical (the models are compared in fp16, as shipped) and the
largest difference, then how many 100-step means of the diffusion loss agree to 5 decimals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffprune.testbed.assets import WEIGHTS_DIR

COMPONENT_FILES = {"vae": "vae/diffusion_pytorch_model.safetensors",
                   "text_encoder": "text_encoder/model.safetensors",
                   "unet": "unet/diffusion_pytorch_model.safetensors",
                   "transformer": "transformer/diffusion_pytorch_model.safetensors"}


def _run_state(run: Path) -> tuple[dict[str, dict], list[float] | None, float | None]:
    """The run's models so far (name -> fp16 tensors), its diffusion loss curve and VAE scaling factor."""
    models: dict[str, dict] = {}
    if (run / "evaluator.safetensors").is_file():
        models["evaluator"] = load_file(str(run / "evaluator.safetensors"))
    if (run / "training.json").is_file():  # finished
        log = json.loads((run / "training.json").read_text())
        for name, file in COMPONENT_FILES.items():
            if (run / "pipeline" / file).is_file():  # a U-Net or a transformer
                models[name] = load_file(str(run / "pipeline" / file))
        return models, log.get("diffusion_loss_curve"), log.get("vae_scaling_factor")
    ckpt_path = run / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise SystemExit(f"{run} holds neither a finished run (training.json) nor a checkpoint.pt")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    vae = (state["done"].get("vae") or {}).get("vae")
    if vae is not None:
        models["vae"] = {k: v.half() for k, v in vae.items()}
    curve = None
    running = state["running"]
    if running is not None and running[0] == "diffusion":
        losses = running[1]["losses"]
        curve = [round(sum(losses[i:i + 100]) / 100, 5) for i in range(0, len(losses) - 99, 100)]
    log = state.get("log") or {}
    return models, curve, log.get("vae_scaling_factor")


def _compare(ours: dict, ref: dict) -> tuple[int, int, float, int]:
    """(identical tensors, tensors in either, largest absolute difference, tensors only one side holds).

    A tensor that only one side holds, or that differs in shape, counts as different with an infinite difference.
    """
    same, diff = 0, 0.0
    keys = set(ours) | set(ref)
    for key in keys:
        tensor, other = ours.get(key), ref.get(key)
        if tensor is None or other is None or tensor.shape != other.shape:
            diff = float("inf")
        elif torch.equal(tensor, other):
            same += 1
        else:
            diff = max(diff, float((tensor.float() - other.float()).abs().max()))
    return same, len(keys), diff, len(keys ^ (set(ours) & set(ref)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="output folder of python -m diffprune.testbed.train (or train_dit)")
    parser.add_argument("--reference", type=Path, default=WEIGHTS_DIR,
                        help="folder to compare with (default: the committed weights)")
    args = parser.parse_args(argv)
    ref_log = json.loads((args.reference / "training.json").read_text())
    models, curve, scaling = _run_state(args.run)
    print(f"run {args.run} against {args.reference}")
    print("| model | identical tensors | largest difference | held by one side only |\n|---|---|---|---|")
    for name, tensors in models.items():
        file = "evaluator.safetensors" if name == "evaluator" else f"pipeline/{COMPONENT_FILES[name]}"
        reference = args.reference / file
        same, total, diff, unmatched = _compare(tensors, load_file(str(reference)) if reference.is_file() else {})
        print(f"| {name} | {same} / {total} | {diff:.3g} | {unmatched} |")
    if scaling is not None:
        print(f"VAE scaling factor: run {scaling!r}, reference {ref_log.get('vae_scaling_factor')!r}")
    if curve:
        ref_curve = ref_log["diffusion_loss_curve"]
        agree = next((i for i, (a, b) in enumerate(zip(curve, ref_curve)) if a != b), min(len(curve), len(ref_curve)))
        print(f"diffusion loss, 100-step means: {agree} of the run's {len(curve)} agree to 5 decimals "
              f"(run {curve[:3]}..., reference {ref_curve[:3]}...)")
    if not models and not curve:
        print("nothing to compare yet: the run has not finished a stage")


if __name__ == "__main__":
    main()
