"""``apply`` / ``remove`` of run-time token pruning on a diffusers U-Net (or a pipeline holding one).

Everything is installed on module instances (hooks, wrapped attention processors, per-instance forwards)
and recorded, so ``remove`` restores the U-Net exactly and ``apply`` on a patched U-Net first removes the old
patch. Per-call state (the timestep, pending recoveries) is reset at every U-Net call; random choices are
seeded from (seed, timestep, site), so a pipeline call gives the same images however often it is repeated.
With ``refresh`` > 1 each block keeps its last ranking for the next calls of the same sampling run; a call
whose timestep is not below the previous one's starts a new run.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from diffprune.anatomy import denoiser_of, is_transformer
from diffprune.errors import DiffpruneError

from . import dit_scoring, gwpr, recovery
from .attention import MapRequest, unwrap_processor, wrap_processor
from .config import TokenPruningConfig
from .kept import KeptTokens
from .dit_patch import ATTR as _DIT_ATTR
from .dit_patch import DitPatch, apply_dit, undo_dit
from .layers import check_layer, pruned_layer_forward, tome_layer_forward
from .schedule import AttentionSite, attention_sites, ratio_for, step_generator
from .tome import bipartite_matching

_ATTR = _DIT_ATTR  # one attribute on either denoiser: a transformer holds a DitPatch, a U-Net a _Patch


class _Runtime:
    """State shared by every site of one patched U-Net during one call."""

    def __init__(self, config: TokenPruningConfig, num_train_timesteps: int):
        self.config = config
        self.num_train_timesteps = num_train_timesteps
        self.timestep: float | None = None
        self.forced_timestep: float | None = None
        self.forced_ranking: bool | None = None
        self.sites: list[_Site] = []
        self.observers: list = []
        self.calls_in_run = 0      # calls since the start of this sampling run (for ``refresh``)
        self.ranking = True        # whether this call ranks afresh or reuses each block's last ranking

    def start_call(self, module, args, kwargs):
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        previous = self.timestep
        if self.forced_timestep is not None:
            self.timestep = self.forced_timestep
        elif isinstance(t, torch.Tensor):
            self.timestep = None if t.device.type == "meta" or t.numel() == 0 else float(t.flatten()[0])
        else:
            self.timestep = None if t is None else float(t)
        new_run = previous is None or self.timestep is None or self.timestep >= previous
        self.calls_in_run = 0 if new_run else self.calls_in_run + 1
        if self.forced_ranking is not None:
            self.ranking = self.forced_ranking
        else:
            self.ranking = self.calls_in_run % self.config.refresh == 0
        for site in self.sites:
            site.reset()

    def plan(self, timestep: float | None) -> tuple:
        """What changes from step to step: each site's ratio at ``timestep``."""
        return tuple(ratio_for(s.info, self.config, timestep, self.num_train_timesteps) for s in self.sites)

    def generator(self, *keys: int) -> torch.Generator:
        return step_generator(self.config.seed, self.timestep, *keys)


class _Site:
    """One attention block at run time: decides its ratio, prunes, and recovers before the next convolution."""

    def __init__(self, site: AttentionSite, runtime: _Runtime):
        self.info = site
        self.runtime = runtime
        self.self_map = MapRequest()
        self.cross_map = MapRequest()
        self.scores_cross = runtime.config.score == "cross"
        self.grid: tuple[int, int] | None = None
        self.strided: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # grid -> (rows, cells)
        self.cells: torch.Tensor | None = None
        self.pending_ratio = 0.0
        self.batch = 0
        self.last: tuple | None = None  # (ratio, batch, grid, Selection) of the last ranking
        self.reusing = False
        self.reset()

    def reset(self) -> None:
        self.pending = None
        self.self_map.wanted = self.cross_map.wanted = False
        self.self_map.attention = self.cross_map.attention = None
        self.self_map.rows = None

    def record_grid(self, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        self.grid = (int(x.shape[-2]), int(x.shape[-1]))
        self.batch = int(x.shape[0])

    def ratio(self) -> float:
        return ratio_for(self.info, self.runtime.config, self.runtime.timestep, self.runtime.num_train_timesteps)

    def begin(self) -> float:
        """Called before the scoring layer: ask for the maps this call needs; returns the ratio."""
        self.reset()
        ratio = self.ratio()
        last = self.last
        self.reusing = (ratio > 0 and not self.runtime.ranking and last is not None
                        and last[:3] == (ratio, self.batch, self.grid))
        if ratio > 0 and not self.reusing:
            config = self.runtime.config
            self.self_map.wanted = config.reads_map(gwpr_on_map=not self.scores_cross)
            self.cross_map.wanted = self.scores_cross
            if config.scorer == "strided" and self.grid is not None:
                if self.grid not in self.strided:  # built once per grid size, reused by every later call
                    self.strided[self.grid] = dit_scoring.strided_queries(*self.grid, config.query_stride)
                self.self_map.rows, self.cells = self.strided[self.grid]
        return ratio

    def prune(self, x: torch.Tensor, ratio: float) -> torch.Tensor:
        """Choose the kept tokens of ``x`` (B, N, C); remember what recovery needs; return the kept ones."""
        if self.reusing:
            return self._keep(x, self.last[3])
        config = self.runtime.config
        rows, cells = self.self_map.rows, self.cells
        if rows is not None:
            rows, cells = rows.to(x.device), cells.to(x.device)
        attention = self.self_map.take() if self.self_map.wanted else None
        batch, n, _ = x.shape
        keep = gwpr.kept_count(n, ratio)
        if config.method == "random":
            # one draw shared by the batch, so a sample's result does not depend on its batch neighbours
            draw = torch.rand(1, n, generator=self.runtime.generator(self.info.index))
            scores = draw.to(x.device).expand(batch, -1)
        elif self.scores_cross:
            scores = gwpr.cross_entropy_scores(self.cross_map.take())
        elif rows is not None:
            scores = dit_scoring.gwpr_from_rows(attention, rows, config.iterations)
        else:
            scores = gwpr.gwpr_scores(attention, config.iterations)
        kept, pruned = gwpr.split_tokens(scores, keep)
        source = dit_scoring.pick_sources(config.source, kept, pruned, states=x, grid=self.grid,
                                          attention=attention, rows=rows, cells=cells)
        selection = recovery.Selection.of(kept, pruned, source)
        if config.refresh > 1:
            self.last = (ratio, self.batch, self.grid, selection)
        return self._keep(x, selection)

    def _keep(self, x: torch.Tensor, selection: recovery.Selection) -> torch.Tensor:
        self.pending = (x, selection)
        if self.runtime.observers:
            event = KeptTokens(site=self.info.name, timestep=self.runtime.timestep, tokens=x.shape[1],
                               grid=self.grid, kept=selection.kept.detach().cpu())
            for observer in self.runtime.observers:
                observer(event)
        return selection.gather(x)

    # block placement: hooks around the first layer
    def before_first(self, module, args, kwargs):
        self.pending_ratio = self.begin()

    def after_first(self, module, args, kwargs, output):
        if self.pending_ratio > 0:
            return self.prune(output, self.pending_ratio)
        return output

    # both placements: recovery after the last layer
    def after_last(self, module, args, output):
        if self.pending is None:
            return output
        at_prune, selection = self.pending
        self.pending = None
        return selection.refill(at_prune, output, self.runtime.config.copy_for(False))

    def tome_matching(self, layer_index: int, x: torch.Tensor):
        ratio = self.ratio()
        if ratio <= 0 or self.grid is None:
            return None
        height, width = self.grid
        # one draw of destinations per call and layer, shared by the batch (CFG's two halves merge alike)
        generator = self.runtime.generator(self.info.index, layer_index)
        return bipartite_matching(x, height, width, ratio, self.runtime.config.stride, generator)


@dataclass
class _Patch:
    config: TokenPruningConfig
    runtime: _Runtime
    handles: list = field(default_factory=list)
    forwards: list = field(default_factory=list)     # (module, its previous instance-level forward or None)
    processors: list = field(default_factory=list)   # attention modules whose processor was wrapped


def _placement(config: TokenPruningConfig, site: AttentionSite) -> str:
    if config.method == "tome":
        return "tome"
    if config.placement == "auto":
        return "block" if site.depth >= 2 else "layer"
    return config.placement


#: options that only mean something on a U-Net / on a diffusion transformer, with their defaults
_UNET_ONLY = {"levels": None, "placement": "auto", "score": "self", "merge": "self", "chunk": None, "refresh": 1}
_DIT_ONLY = {"blocks": None}


def _check_fits(config: TokenPruningConfig, transformer: bool) -> None:
    foreign = _UNET_ONLY if transformer else _DIT_ONLY
    wrong = [name for name, default in foreign.items() if getattr(config, name) != default]
    if wrong:
        kind = "U-Nets" if transformer else "diffusion transformers"
        raise DiffpruneError(f"token pruning option{'s' if len(wrong) > 1 else ''} {', '.join(wrong)} "
                             f"appl{'y' if len(wrong) > 1 else 'ies'} to {kind} only")


def apply(target, config: TokenPruningConfig | None = None):
    """Patch the denoiser of ``target`` (a pipeline, a bare U-Net or a bare diffusion transformer) to prune
    tokens at run time; returns ``target``.

    Idempotent: applying again replaces the previous patch. ``remove`` undoes it exactly.
    """
    config = config or TokenPruningConfig()
    unet = denoiser_of(target, "token pruning")
    remove(unet)
    _check_fits(config, is_transformer(unet))
    scheduler = getattr(target, "scheduler", None)
    steps = int(getattr(getattr(scheduler, "config", None), "num_train_timesteps", 1000) or 1000)
    if is_transformer(unet):
        setattr(unet, _ATTR, apply_dit(unet, config, steps))
        return target
    runtime = _Runtime(config, steps)
    patch = _Patch(config, runtime)
    sites = attention_sites(unet)
    modules = dict(unet.named_modules())
    try:
        for info in sites:
            if config.levels is not None and info.level not in config.levels:
                continue
            t2d = modules[info.name]
            placement = _placement(config, info)
            if placement == "block" and info.depth < 2:
                continue  # pruning after the only layer would save nothing
            for i, layer in enumerate(t2d.transformer_blocks):
                check_layer(layer, f"{info.name}.transformer_blocks.{i}")
            site = _Site(info, runtime)
            runtime.sites.append(site)
            patch.handles.append(t2d.register_forward_pre_hook(site.record_grid, with_kwargs=True))
            layers = list(t2d.transformer_blocks)
            if placement == "tome":
                for index, layer in enumerate(layers):
                    patch.forwards.append((layer, layer.__dict__.get("forward")))
                    layer.forward = functools.partial(tome_layer_forward, layer, site, index)
                continue
            first = layers[0]
            for attn in (first.attn1, first.attn2 if site.scores_cross else None):
                if attn is not None and isinstance(attn.processor, torch.nn.Module):
                    raise DiffpruneError(f"{info.name} uses the attention processor {type(attn.processor).__name__} "
                                         "(e.g. an IP-Adapter); token pruning needs diffusers' standard processors")
            wrap_processor(first.attn1, site.self_map, config.chunk)
            patch.processors.append(first.attn1)
            if site.scores_cross and first.attn2 is not None:
                wrap_processor(first.attn2, site.cross_map, config.chunk)
                patch.processors.append(first.attn2)
            if placement == "block":
                patch.handles.append(first.register_forward_pre_hook(site.before_first, with_kwargs=True))
                patch.handles.append(first.register_forward_hook(site.after_first, with_kwargs=True))
            else:
                patch.forwards.append((first, first.__dict__.get("forward")))
                first.forward = functools.partial(pruned_layer_forward, first, site)
            patch.handles.append(layers[-1].register_forward_hook(site.after_last))
        if not runtime.sites:
            found = sorted({(info.level, info.depth) for info in sites})
            raise DiffpruneError(f"token pruning '{config.spec()}' selects no attention block of this U-Net, so it "
                                 "would prune nothing (its attention blocks, as level/layers: "
                                 + (", ".join(f"{lv}/{d}" for lv, d in found) or "none") + ")")
        patch.handles.insert(0, unet.register_forward_pre_hook(runtime.start_call, with_kwargs=True))
    except Exception:
        _undo(patch)
        raise
    setattr(unet, _ATTR, patch)
    return target


def _undo(patch: _Patch) -> None:
    for handle in patch.handles:
        handle.remove()
    for module, previous in reversed(patch.forwards):
        module.__dict__.pop("forward", None)
        if previous is not None:
            module.forward = previous
    for attn in patch.processors:
        unwrap_processor(attn)


def remove(target):
    """Undo ``apply`` (a no-op on an unpatched denoiser); returns ``target``."""
    unet = denoiser_of(target, "token pruning")
    patch = unet.__dict__.pop(_ATTR, None)
    if isinstance(patch, DitPatch):
        undo_dit(patch)
    elif patch is not None:
        _undo(patch)
    return target


def active_patch(target):
    """The patch :func:`apply` installed on ``target``'s denoiser (its config and run-time state), or ``None``."""
    return denoiser_of(target, "token pruning").__dict__.get(_ATTR)


@contextmanager
def observe_kept(target, callback):
    """Call ``callback(KeptTokens)`` each time an attention block of ``target``'s token-pruning patch chooses
    its kept tokens (AT-EDM and random; ToMe merges instead). Observers do not change the images."""
    patch = active_patch(target)
    if patch is None:
        raise DiffpruneError("observe_kept needs a token-pruning patch: apply one first")
    patch.runtime.observers.append(callback)
    try:
        yield
    finally:
        patch.runtime.observers.remove(callback)


def applied_config(target) -> TokenPruningConfig | None:
    """The configuration applied to ``target``'s U-Net, or ``None``."""
    patch = active_patch(target)
    return None if patch is None else patch.config


@contextmanager
def at_timestep(target, timestep: float | None, ranking: bool | None = None):
    """Run the patched U-Net as if called at ``timestep`` (for FLOPs counts on the ``meta`` device, where the
    timestep tensor has no value); ``ranking`` ``False``: as a call that reuses the last ranking (``refresh``)."""
    patch = active_patch(target)
    if patch is None:
        yield
        return
    runtime = patch.runtime  # a diffusion transformer's runtime has no rankings to reuse
    unet = isinstance(runtime, _Runtime)
    saved = runtime.forced_timestep, runtime.forced_ranking if unet else None
    runtime.forced_timestep = timestep
    if unet:
        runtime.forced_ranking = ranking
    try:
        yield
    finally:
        runtime.forced_timestep = saved[0]
        if unet:
            runtime.forced_ranking = saved[1]
