"""``apply`` / ``remove`` of run-time token pruning on a diffusion transformer (PixArt, SD3, Flux, Sana).

In each segment of blocks, the first block runs on every token; its image queries and keys (caught at the
attention's projections, so the attention itself keeps its fused kernel) rank the image tokens; the later blocks
of the segment run on the kept image tokens only, with their rotary positions (Flux) gathered alike; after the
segment's last block the pruned tokens are restored by copying the output of the kept token they attend to
most. Sana's feed-forward convolves the full grid, so there the kept tokens only skip the attention calls, and
every attention output is restored at once. ToMe merges the image tokens entering each block of a segment and
adds the merged update back to every member.

Everything is installed as hooks and processor wrappers on module instances and recorded, so ``remove`` restores
the transformer exactly. Text tokens are never pruned.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch

from . import dit_scoring as scoring
from . import recovery
from .config import TokenPruningConfig
from .dit_sites import TIMESTEP_SCALE, Segment, early, image_grid, segments, transformer_blocks
from .gwpr import kept_count
from .kept import KeptTokens
from .rows import put
from .schedule import step_generator
from .tome import bipartite_matching

ATTR = "_diffprune_tokens"


@dataclass(frozen=True)
class PerSampleRotary:
    """Rotary (cos, sin) per sample, (B, S, D) each: the kept tokens differ between the samples of a batch."""

    cos: torch.Tensor
    sin: torch.Tensor


class PerSampleProcessor:
    """Wraps a Flux attention processor: with a :class:`PerSampleRotary` it attends one sample at a time."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kwargs):
        if not isinstance(image_rotary_emb, PerSampleRotary):
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        outs = []
        for b in range(hidden_states.shape[0]):
            context = None if encoder_hidden_states is None else encoder_hidden_states[b:b + 1]
            rotary = (image_rotary_emb.cos[b], image_rotary_emb.sin[b])
            outs.append(self.inner(attn, hidden_states[b:b + 1], context, attention_mask, rotary, **kwargs))
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)


@dataclass
class _State:
    """One segment during one call."""

    span: tuple[int, int] | None = None
    ratio: float = 0.0
    capture: dict = field(default_factory=dict)
    text_tokens: int = 0
    rotary: tuple | None = None
    kept: torch.Tensor | None = None
    pruned: torch.Tensor | None = None
    source: torch.Tensor | None = None
    at_prune: torch.Tensor | None = None
    merges: dict = field(default_factory=dict)


def _image_in(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_image_in(args, kwargs, x):
    if args:
        return (x, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": x}


def _image_out(output):
    return output[1] if isinstance(output, tuple) else output


def _with_image_out(output, x):
    return (output[0], x, *output[2:]) if isinstance(output, tuple) else x


class DitRuntime:
    """State shared by the hooks of one patched transformer."""

    def __init__(self, config: TokenPruningConfig, model, num_train_timesteps: int):
        self.config = config
        self.model = model
        self.num_train_timesteps = num_train_timesteps
        self.blocks = transformer_blocks(model)
        self.segments = segments(config, len(self.blocks))
        self.scale = TIMESTEP_SCALE.get(type(model).__name__, 1.0)
        self.timestep: float | None = None
        self.forced_timestep: float | None = None
        self.grid: tuple[int, int] | None = None
        self.states = [_State() for _ in self.segments]
        self.signature = inspect.signature(type(model).forward)
        self.observers: list = []

    @property
    def sites(self) -> list[str]:
        """The blocks the segments cover."""
        return [self.blocks[i].name for s in self.segments for i in range(s.first, s.last + 1)]

    # the plan of one step
    def plan(self, timestep: float | None) -> tuple:
        is_early = early(self.config, timestep, self.num_train_timesteps)
        ratio = self.config.ratio_at(is_early)
        return tuple((s.during(is_early), ratio) if ratio > 0 else (None, 0.0) for s in self.segments)

    def start_call(self, module, args, kwargs):
        call = self.signature.bind_partial(module, *args, **kwargs).arguments
        t = call.get("timestep")
        if self.forced_timestep is not None:
            self.timestep = self.forced_timestep
        elif isinstance(t, torch.Tensor):
            self.timestep = None if t.device.type == "meta" or t.numel() == 0 else float(t.flatten()[0]) * self.scale
        else:
            self.timestep = None if t is None else float(t) * self.scale
        self.grid = image_grid(module, call)
        for state, (span, ratio) in zip(self.states, self.plan(self.timestep)):
            state.__init__(span=span, ratio=ratio)

    def generator(self, *keys: int) -> torch.Generator:
        return step_generator(self.config.seed, self.timestep, *keys)

    def segment_of(self, index: int) -> tuple[Segment, _State] | None:
        for segment, state in zip(self.segments, self.states):
            if segment.first <= index <= segment.last:
                return segment, state
        return None

    # ranking
    def rank(self, block_index: int, output_image: torch.Tensor, state: _State) -> None:
        config, block = self.config, self.blocks[block_index]
        attn = _attention_of(self.model, block)
        query, key = state.capture.get("q"), state.capture.get("k")
        state.capture = {}
        if query is None or key is None:
            return  # the block did not run its attention (a cache hook skipped it): nothing to rank on
        q, k = scoring.image_query_key(query, key, attn, state.text_tokens, state.rotary)
        batch, n = output_image.shape[:2]
        height, width = self.grid if self.grid and self.grid[0] * self.grid[1] == n else (n, 1)
        linear = block.kind == "sana"
        rows = cells = None
        if config.scorer == "strided":
            rows, cells = scoring.strided_queries(height, width, config.query_stride, q.device)
        attention = None
        if config.reads_map(gwpr_on_map=not linear):
            attention = scoring.attention_rows(q, k, rows, linear=linear, scale=getattr(attn, "scale", None))
        keep = kept_count(n, state.ratio)
        if config.method == "random":
            draw = torch.rand(1, n, generator=self.generator(block_index))
            scores = draw.to(q.device).expand(batch, -1)
        elif linear:
            scores = scoring.linear_gwpr(q, k, config.iterations)
        else:
            scores = scoring.gwpr_from_rows(attention, rows, config.iterations)
        kept, pruned = scoring.choose(scores, keep)
        state.kept, state.pruned = kept, pruned
        state.source = scoring.pick_sources(config.source, kept, pruned, states=output_image, grid=(height, width),
                                           attention=attention, rows=rows, cells=cells)
        if self.observers:
            event = KeptTokens(site=block.name, timestep=self.timestep, tokens=n, grid=self.grid,
                               kept=kept.detach().cpu())
            for observer in self.observers:
                observer(event)

    def rotary_for(self, rotary, text_tokens: int, positions: torch.Tensor):
        """The rotary (cos, sin) of the text tokens and the image tokens at ``positions`` (B, K)."""
        cos, sin = rotary
        text_cos, text_sin, image_cos, image_sin = cos[:text_tokens], sin[:text_tokens], cos[text_tokens:], \
            sin[text_tokens:]
        shared = positions.shape[0] == 1 or positions.device.type == "meta" or bool((positions == positions[:1]).all())
        if shared:  # on meta (FLOPs counts) every sample costs the same
            index = positions[0].to(cos.device)
            return torch.cat([text_cos, image_cos[index]]), torch.cat([text_sin, image_sin[index]])
        index = positions.to(cos.device)
        expand = (positions.shape[0], -1, -1)
        return PerSampleRotary(torch.cat([text_cos.expand(*expand), image_cos[index]], 1),
                               torch.cat([text_sin.expand(*expand), image_sin[index]], 1))


def _attention_of(model, block):
    module = model.get_submodule(block.name)
    return module.attn1 if block.kind in ("pixart", "sana") else module.attn


def _text_tokens(kind: str, kwargs: dict) -> int:
    """Text tokens at the head of the sequence the block's ``to_q`` projects (Flux's single blocks)."""
    if kind != "single":
        return 0
    context = kwargs.get("encoder_hidden_states")
    return 0 if context is None else int(context.shape[1])


# hooks ------------------------------------------------------------------------------------------------------


def _capture(state_of, name: str, module, args, output):
    state = state_of()
    if state is not None and state.capture.get("armed"):
        if name == "qkv":
            state.capture["q"], state.capture["k"], _ = output.chunk(3, dim=-1)
        else:
            state.capture[name] = output


def _before_block(runtime: DitRuntime, index: int, module, args, kwargs):
    found = runtime.segment_of(index)
    if found is None:
        return None
    _, state = found
    if state.span is None or not state.span[0] <= index <= state.span[1]:
        return None
    kind = runtime.blocks[index].kind
    rotary = kwargs.get("image_rotary_emb")
    text = kwargs.get("encoder_hidden_states")
    text_length = 0 if text is None else int(text.shape[1])
    if runtime.config.method == "tome":
        if kind == "sana":
            return None  # merged around its attention calls (see _sana_attention_before)
        x = _image_in(args, kwargs)
        height, width = runtime.grid
        matching = bipartite_matching(x, height, width, state.ratio, runtime.config.stride,
                                      runtime.generator(index)) if height * width == x.shape[1] else None
        if matching is None:
            return None
        merged = matching.merge(x)
        state.merges[index] = (x, matching, merged)
        if rotary is not None:
            kwargs = {**kwargs, "image_rotary_emb": runtime.rotary_for(rotary, text_length, matching.kept)}
        return _with_image_in(args, kwargs, merged)
    if index == state.span[0]:
        state.capture = {"armed": True}
        state.text_tokens = _text_tokens(kind, kwargs)
        state.rotary = None if rotary is None else (rotary[0][text_length:], rotary[1][text_length:])
        return None
    if state.kept is not None and rotary is not None and kind != "sana":
        return args, {**kwargs, "image_rotary_emb": runtime.rotary_for(rotary, text_length, state.kept)}
    return None


def _after_block(runtime: DitRuntime, index: int, module, args, kwargs, output):
    found = runtime.segment_of(index)
    if found is None:
        return None
    _, state = found
    if state.span is None:
        return None
    kind = runtime.blocks[index].kind
    if runtime.config.method == "tome":
        merge = state.merges.pop(index, None)
        if merge is None:
            return None
        x, matching, merged = merge
        return _with_image_out(output, x + matching.unmerge(_image_out(output) - merged))
    if index == state.span[0]:
        image = _image_out(output)
        runtime.rank(index, image, state)
        if state.kept is None or kind == "sana":
            return None
        state.at_prune = image
        return _with_image_out(output, recovery.gather_tokens(image, state.kept))
    if index == state.span[1] and state.at_prune is not None:
        full = recovery.refill(state.at_prune, _image_out(output), state.kept, state.pruned, state.source,
                               runtime.config.copy_for(True))
        state.at_prune = None
        return _with_image_out(output, full)
    return None


def _sana_attention_before(runtime: DitRuntime, index: int, part: int, module, args, kwargs):
    _, state = runtime.segment_of(index)
    if state.span is None or not state.span[0] <= index <= state.span[1]:
        return None
    x = _image_in(args, kwargs)
    if runtime.config.method == "tome":
        height, width = runtime.grid
        matching = bipartite_matching(x, height, width, state.ratio, runtime.config.stride,
                                      runtime.generator(index, part))
        if matching is None:
            return None
        state.merges[(index, part)] = matching
        return _with_image_in(args, kwargs, matching.merge(x))
    if index == state.span[0] or state.kept is None:
        return None
    state.merges[(index, part)] = None
    return _with_image_in(args, kwargs, recovery.gather_tokens(x, state.kept))


def _sana_attention_after(runtime: DitRuntime, index: int, part: int, module, args, kwargs, output):
    _, state = runtime.segment_of(index)
    if (index, part) not in state.merges:
        return None
    matching = state.merges.pop((index, part))
    if matching is not None:
        return matching.unmerge(output)
    batch, _, channels = output.shape
    n = state.kept.shape[1] + state.pruned.shape[1]
    full = output.new_empty(batch, n, channels)
    put(full, state.kept, output)
    put(full, state.pruned, recovery.gather_tokens(output, state.source))
    return full


# apply / remove -----------------------------------------------------------------------------------------------


@dataclass
class DitPatch:
    config: TokenPruningConfig
    runtime: DitRuntime
    handles: list = field(default_factory=list)
    processors: list = field(default_factory=list)  # attention modules whose processor was wrapped


def apply_dit(model, config: TokenPruningConfig, num_train_timesteps: int = 1000) -> DitPatch:
    """Install token pruning on a bare diffusion transformer (the caller removes any earlier patch)."""
    runtime = DitRuntime(config, model, num_train_timesteps)
    patch = DitPatch(config, runtime)
    try:
        for segment in runtime.segments:
            for index in range(segment.first, segment.last + 1):
                block = runtime.blocks[index]
                module = model.get_submodule(block.name)
                patch.handles.append(module.register_forward_pre_hook(
                    functools.partial(_before_block, runtime, index), with_kwargs=True))
                patch.handles.append(module.register_forward_hook(
                    functools.partial(_after_block, runtime, index), with_kwargs=True))
                attn = _attention_of(model, block)
                if block.kind == "sana":
                    for part, attention in enumerate((module.attn1, module.attn2)):
                        if attention is None:
                            continue
                        patch.handles.append(attention.register_forward_pre_hook(
                            functools.partial(_sana_attention_before, runtime, index, part), with_kwargs=True))
                        patch.handles.append(attention.register_forward_hook(
                            functools.partial(_sana_attention_after, runtime, index, part), with_kwargs=True))
                if block.kind in ("double", "single"):
                    attn.set_processor(PerSampleProcessor(attn.processor))
                    patch.processors.append(attn)
                if index == segment.first and config.method != "tome":
                    state_of = _state_getter(runtime, segment.index)
                    names = ("qkv",) if getattr(attn, "fused_projections", False) else ("q", "k")
                    for name in names:
                        projection = getattr(attn, "to_qkv" if name == "qkv" else f"to_{name}")
                        hook = functools.partial(_capture, state_of, name)
                        patch.handles.append(projection.register_forward_hook(hook))
        patch.handles.insert(0, model.register_forward_pre_hook(runtime.start_call, with_kwargs=True))
    except Exception:
        undo_dit(patch)
        raise
    return patch


def _state_getter(runtime: DitRuntime, segment_index: int):
    return lambda: runtime.states[segment_index]


def undo_dit(patch: DitPatch) -> None:
    for handle in patch.handles:
        handle.remove()
    for attn in patch.processors:
        if isinstance(attn.processor, PerSampleProcessor):
            attn.set_processor(attn.processor.inner)
