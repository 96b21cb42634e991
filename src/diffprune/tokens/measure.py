"""FLOPs of a token-pruned U-Net or diffusion transformer averaged over a sampling schedule (DSAP makes steps
differ), counted on what really runs: the explicit scoring attention, G-WPR's iterations and ToMe's similarity
products included."""

from __future__ import annotations

from dataclasses import dataclass

from diffprune.anatomy import denoiser_of, geometry
from diffprune.measure.flops import FlopCount, count_flops
from diffprune.measure.inputs import denoiser_inputs

from .patch import active_patch, at_timestep


@dataclass
class ScheduleFlops:
    """Denoiser FLOPs per call at each step of an ``steps``-step schedule, and their mean."""

    timesteps: list[float]   # one entry per U-Net call of the schedule (some schedulers call more than steps)
    per_step: list[FlopCount]

    @property
    def mean_tflops(self) -> float:
        return sum(f.total for f in self.per_step) / len(self.per_step) / 1e12

    @property
    def mean_attention_tflops(self) -> float:
        return sum(f.attention for f in self.per_step) / len(self.per_step) / 1e12


def schedule_timesteps(target, steps: int) -> list[float]:
    """The timesteps a pipeline's scheduler visits in ``steps`` steps (DDIM's if ``target`` is a bare denoiser).
    A flow-matching scheduler whose shift depends on the image size (Flux) is read without the shift."""
    from diffusers import DDIMScheduler

    scheduler = getattr(target, "scheduler", None)
    scheduler = type(scheduler).from_config(scheduler.config) if scheduler is not None else DDIMScheduler()
    try:
        scheduler.set_timesteps(steps)
    except ValueError:  # "pass mu": dynamic shifting; mu = 0 is no shift
        scheduler.set_timesteps(steps, mu=0.0)
    return [float(t) for t in scheduler.timesteps]


def schedule_flops(target, steps: int, *, resolution: int, batch: int = 1, vae_scale_factor: int | None = None,
                   text_length: int | None = None) -> ScheduleFlops:
    """Count one U-Net call at every timestep of the schedule (on ``meta``: shapes only, no arithmetic); calls
    with the same pruning plan are counted once. With ``refresh`` > 1 the calls that reuse a ranking are
    counted as such (no map, no G-WPR). The VAE factor and text length default to the pipeline's
    (8 and 77 for a bare U-Net)."""
    unet = denoiser_of(target, "token pruning")
    g = geometry(target, vae_scale_factor=vae_scale_factor, text_length=text_length)
    vae_scale_factor, text_length = g.vae_scale_factor, g.text_length
    timesteps = schedule_timesteps(target, steps)
    patch = active_patch(unet)
    inputs = denoiser_inputs(unet, resolution=resolution, batch=batch, vae_scale_factor=vae_scale_factor,
                         text_length=text_length)
    refresh = 1 if patch is None else patch.config.refresh
    cache: dict[tuple, FlopCount] = {}
    per_step = []
    for i, t in enumerate(timesteps):
        ranking = i % refresh == 0  # with refresh > 1 the calls in between reuse the last ranking
        key = () if patch is None else patch.runtime.plan(t) + (ranking,)
        if key not in cache:
            if not ranking:  # a ranking call at the same plan first, so each block has a ranking to reuse
                with at_timestep(unet, t, ranking=True):
                    count_flops(unet, **inputs)
            with at_timestep(unet, t, ranking=ranking):
                cache[key] = count_flops(unet, **inputs)
        per_step.append(cache[key])
    return ScheduleFlops(timesteps=timesteps, per_step=per_step)


def ratio_for_flops(target, config, tflops: float, steps: int, *, resolution: int, batch: int = 1,
                    vae_scale_factor: int | None = None, text_length: int | None = None, tolerance: float = 0.002):
    """The ``ratio`` at which ``config``'s method averages ``tflops`` per U-Net call over ``steps`` steps (by
    bisection; FLOPs fall as the ratio rises), and the mean TFLOPs reached. Leaves ``target`` unpatched."""
    from .config import with_ratio
    from .patch import apply, remove

    high_limit = (1 - 1 / config.stride**2) if config.method == "tome" else 0.99

    def mean_at(ratio: float) -> float:
        apply(target, with_ratio(config, ratio))
        try:
            return schedule_flops(target, steps, resolution=resolution, batch=batch,
                                  vae_scale_factor=vae_scale_factor, text_length=text_length).mean_tflops
        finally:
            remove(target)

    low, high = 0.0, high_limit
    best = (high, mean_at(high))
    if best[1] > tflops:
        return best  # even the largest ratio cannot get down to the budget
    for _ in range(30):
        mid = (low + high) / 2
        value = mean_at(mid)
        if value > tflops:
            low = mid
        else:
            high, best = mid, (mid, value)
        if abs(value - tflops) <= tolerance * tflops:
            break
    return best
