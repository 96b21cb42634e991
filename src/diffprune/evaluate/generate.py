"""Seeded image generation for evaluations, in fixed batches, optionally sharded across processes.

Each image starts from latents drawn from its prompt's own seed, and batches are cut from the prompt list the
same way whatever the number of processes (accelerate's ``split_between_processes`` hands whole batches to
processes), so a run on one process and a run on several produce the same images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .prompts import EvalPrompt


def _initial_latents(pipe, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    channels = pipe.unet.config.in_channels
    shape = (1, channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])


def _resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


@torch.no_grad()
def _generate_batch(pipe, prompts: Sequence[EvalPrompt], steps: int, guidance_scale: float,
                    resolution: int) -> torch.Tensor:
    param = next(pipe.unet.parameters())
    latents = _initial_latents(pipe, [p.seed for p in prompts], resolution, resolution)
    out = pipe(prompt=[p.caption for p in prompts], num_inference_steps=steps, guidance_scale=guidance_scale,
               height=resolution, width=resolution, latents=latents.to(param.device, param.dtype),
               output_type="pt")
    return out.images.float().cpu().clamp(0, 1)


def generate(pipe, prompts: Sequence[EvalPrompt], *, steps: int = 20, guidance_scale: float = 5.0,
             batch_size: int = 25, resolution: int | None = None, progress: bool = True,
             desc: str = "generating") -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [0, 1] for ``prompts``, in order.

    Under ``accelerate launch`` (or any multi-process launcher accelerate understands) the batches are split
    between processes and gathered back, so every process returns the full, identical tensor.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    resolution = resolution or _resolution(pipe)
    pipe.set_progress_bar_config(disable=True)
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    state = PartialState()
    done: list[tuple[int, torch.Tensor]] = []
    with state.split_between_processes(list(enumerate(batches))) as mine:
        for b, indices in tqdm(mine, desc=desc, disable=not progress or not state.is_main_process,
                               unit="batch"):
            done.append((b, _generate_batch(pipe, [prompts[i] for i in indices], steps, guidance_scale,
                                            resolution)))
    if state.num_processes > 1:
        done = gather_object(done)
    return torch.cat([images for _, images in sorted(done, key=lambda item: item[0])])


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process
