"""Seeded image generation for evaluations, in fixed batches, optionally sharded across processes.

Each image starts from latents drawn from its prompt's own seed, and batches are cut from the prompt list the
same way whatever the number of processes (accelerate's ``split_between_processes`` hands whole batches to
processes), so a run on one process and a run on several produce the same images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from diffprune.anatomy import call_options, denoiser_of, geometry, has_unet, unet_of

from .prompts import EvalPrompt


def _initial_latents(pipe, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    channels = unet_of(pipe, "initial latents").config.in_channels
    factor = geometry(pipe).vae_scale_factor
    shape = (1, channels, height // factor, width // factor)
    return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])


def image_size(pipe) -> int:
    """The side in pixels a pipeline draws by default."""
    return geometry(pipe).resolution


def to_pil(images: torch.Tensor) -> list:
    """``(N, 3, H, W)`` images in [0, 1] as PIL images."""
    from PIL import Image

    arrays = (images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().numpy()
    return [Image.fromarray(a) for a in arrays]


@torch.no_grad()
def _generate_batch(pipe, prompts: Sequence[EvalPrompt], steps: int, guidance_scale: float,
                    resolution: int) -> torch.Tensor:
    param = next(denoiser_of(pipe, "generation").parameters())
    options = call_options(pipe)
    if has_unet(pipe):
        latents = _initial_latents(pipe, [p.seed for p in prompts], resolution, resolution)
        options["latents"] = latents.to(param.device, param.dtype)
        # stochastic samplers draw fresh noise at every step: from each prompt's own generator, not the global RNG
        generators = [torch.Generator(param.device).manual_seed(p.seed + 1) for p in prompts]
    else:  # a transformer pipeline draws (and for Flux packs) each prompt's latents from that prompt's generator
        generators = [torch.Generator(param.device).manual_seed(p.seed) for p in prompts]
    out = pipe(prompt=[p.caption for p in prompts], num_inference_steps=steps, guidance_scale=guidance_scale,
               height=resolution, width=resolution, generator=generators, output_type="pt", **options)
    # 8-bit like any saved image: what users see, and a quarter of the memory to gather across processes
    return (out.images.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def generate(pipe, prompts: Sequence[EvalPrompt], *, steps: int = 20, guidance_scale: float = 5.0,
             batch_size: int = 25, resolution: int | None = None, progress: bool = True,
             desc: str = "generating") -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [0, 1] (8-bit levels) for ``prompts``, in order.

    Under a multi-process launcher accelerate understands (``torchrun``, ``accelerate launch --multi_gpu``) the
    batches are split between processes and gathered back, so every process returns the full, identical tensor.
    """
    from accelerate.utils import gather_object

    resolution = resolution or image_size(pipe)
    pipe.set_progress_bar_config(disable=True)
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    state = _state()
    done: list[tuple[int, torch.Tensor]] = []
    with state.split_between_processes(list(enumerate(batches))) as mine:
        for b, indices in tqdm(mine, desc=desc, disable=not progress or not state.is_main_process,
                               unit="batch"):
            done.append((b, _generate_batch(pipe, [prompts[i] for i in indices], steps, guidance_scale,
                                            resolution)))
    if state.num_processes > 1:
        done = gather_object(done)
    return torch.cat([images for _, images in sorted(done, key=lambda item: item[0])]).float() / 255


def _state():
    """accelerate's process state; CPU-only machines join the process group over gloo (accelerate only does so
    when asked for the CPU)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return _state().is_main_process


def process_count() -> int:
    return _state().num_processes


def process_device(requested: str | None) -> str | None:
    """The device this process should use: under a multi-process launcher each rank gets its own accelerator."""
    state = _state()
    if state.num_processes > 1 and state.device.type != "cpu" and requested in (None, state.device.type):
        return str(state.device)
    return requested
