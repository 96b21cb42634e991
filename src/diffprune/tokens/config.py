"""Configuration of run-time token pruning, and the spec strings the CLI takes (``atedm:ratio=0.63,dsap=on``)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from diffprune.errors import DiffpruneError

METHODS = ("atedm", "tome", "random")
SOURCES = ("attention", "similarity", "nearest")


@dataclass(frozen=True)
class TokenPruningConfig:
    """What to prune, where and when.

    - ``method``: ``atedm`` (G-WPR ranking + similarity recovery), ``random`` (random ranking, same placement and
      recovery: isolates what the ranking is worth) or ``tome`` (ToMe: bipartite soft matching with a random 2x2
      stride, merge before self-attention, unmerge after).
    - ``ratio``: share of tokens removed (pruned or merged) in each pruned attention block.
    - ``levels``: which latent resolutions are pruned, as down-sampling factors of the U-Net input (1 = the
      full latent grid, 2 = half, ...); ``None`` prunes every level that has attention. SD-XL's attention sits
      at 2 and 4; the paper's AT-EDM-dagger variant is ``levels=(4,)``.
    - ``dsap``: denoising-step-aware pruning. Steps whose timestep lies in the top ``tau`` of the noise range
      (for evenly spaced schedules: the first ``tau`` of the steps) leave the first attention block of every
      down stage and the last of every up stage unpruned, and prune the others with ``early_ratio`` (default:
      ``ratio``); later steps prune every selected block with ``ratio``. The default ``tau=0.05`` (one step of
      20) makes SD-XL at 1024² with ratio 0.63 average the paper's 4.1 TFLOPs per step; a longer early phase
      spends FLOPs on the steps that fix the layout.
    - ``iterations``: G-WPR power iterations; ``score``: ``self`` (G-WPR on the self-attention map) or
      ``cross`` (low entropy of the cross-attention rows ranks high).
    - ``copy``: recovery copies the most similar kept token's ``state``, or its ``delta`` (the update the
      later layers gave it) onto the pruned token's own state; ``auto``: ``state`` on U-Nets (AT-EDM's, over one
      attention block), ``delta`` on diffusion transformers, whose segments span many blocks (a copied state
      would throw away everything the pruned token carried).
    - ``placement``: ``auto`` prunes after the first layer of blocks with >= 2 transformer layers (the paper)
      and inside the layer of one-layer blocks (SD-1.5/2.x: cross-attention and feed-forward on kept tokens).
    - ``chunk``: query rows per chunk when the scoring layer builds its attention map (``None``: sized so
      one chunk holds ~2M scores); ``stride``: ToMe's destination grid; ``merge``: what ToMe runs on merged
      tokens, ``self`` (self-attention, its default), ``self+cross`` or ``all`` (feed-forward too; needed to
      reach AT-EDM's FLOPs on SD-XL); ``seed``: random and ToMe choices.

    On diffusion transformers (PixArt, SD3, Flux, Sana), blocks take the place of levels:

    - ``blocks``: segments of blocks, as inclusive ``(first, last)`` pairs in forward order (Flux: the double
      blocks, then the single ones). The first block of a segment runs on every token and ranks them; the
      others run on the kept image tokens only (text tokens are never pruned); the pruned ones are restored by
      similarity copy after the segment's last block (on Sana, whose feed-forward convolves the full grid, around
      every attention call of the segment). ``None``: one segment from the second block to the second-to-last,
      which leaves the first and the last block to diffusers' first-block and MagCache hooks. ToMe merges in
      every block of a segment, the first one included. DSAP's early phase spares each segment's first pruned and
      last block.
    - ``source`` (U-Nets too): which kept token a pruned one copies at recovery. ``attention`` (AT-EDM): the
      kept token it (or, with the strided scorer, its cell's query) attends to most in the ranking layer;
      ``similarity``: the kept token whose state at the pruning point is closest in cosine similarity;
      ``nearest``: the closest kept token on the image grid (ties to the lower token index). With ``random``
      ranking and another source than ``attention``, no attention map is built.
    - ``scorer`` (U-Nets too): ``full`` builds the image-image attention map of the ranking block (softmax over
      the image keys, heads averaged); ``strided`` reads only the rows of one query per ``query_stride`` x
      ``query_stride`` cell (``query_stride``² times cheaper) and lets every pruned token copy the kept
      token its cell's query attends to most. On a U-Net the scoring layer's output then comes from the fused
      kernel instead of the explicit chunked attention.
    - ``refresh`` (U-Nets): rank at every ``refresh``-th denoiser call of a sampling run and let the calls in
      between reuse that ranking (the kept set and the copy sources of every block), skipping the map, G-WPR and
      the choice. Consecutive steps keep about 92 % of each other's kept set on the testbed. A call whose
      timestep is not below the previous call's starts a new run (and ranks), so repeated pipeline calls give the
      same images; a block also ranks afresh when its ratio or its batch or grid changed.
    """

    method: str = "atedm"
    ratio: float = 0.63
    levels: tuple[int, ...] | None = None
    dsap: bool = True
    tau: float = 0.05
    early_ratio: float | None = None
    iterations: int = 5
    score: str = "self"
    copy: str = "auto"
    placement: str = "auto"
    chunk: int | None = None
    stride: int = 2
    merge: str = "self"
    seed: int = 0
    blocks: tuple[tuple[int, int], ...] | None = None
    scorer: str = "full"
    query_stride: int = 2
    refresh: int = 1
    source: str = "attention"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DiffpruneError(f"unknown token pruning method '{self.method}' (choose from {', '.join(METHODS)})")
        if self.stride < 1:  # before the merge limit, which divides by it
            raise DiffpruneError(f"stride must be at least 1, got {self.stride}")
        limit = 1 - 1 / self.stride**2 if self.method == "tome" else 1.0
        for name in ("ratio", "early_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise DiffpruneError(f"{name} must be in [0, 1), got {value}")
            if value is not None and value > limit:
                raise DiffpruneError(f"tome with stride {self.stride} merges at most {limit:.2f} of the tokens, "
                                     f"got {name}={value}")
        if not 0 <= self.tau <= 1:
            raise DiffpruneError(f"tau must be in [0, 1], got {self.tau}")
        if self.iterations < 1:
            raise DiffpruneError(f"iterations must be at least 1, got {self.iterations}")
        if self.score not in ("self", "cross"):
            raise DiffpruneError(f"score must be 'self' or 'cross', got '{self.score}'")
        if self.copy not in ("auto", "state", "delta"):
            raise DiffpruneError(f"copy must be auto, state or delta, got '{self.copy}'")
        if self.placement not in ("auto", "block", "layer"):
            raise DiffpruneError(f"placement must be auto, block or layer, got '{self.placement}'")
        if self.levels is not None and (not self.levels or any(v < 1 or v & (v - 1) for v in self.levels)):
            raise DiffpruneError(f"levels must be powers of two such as 1, 2, 4, got {self.levels}")
        if self.chunk is not None and self.chunk < 1:
            raise DiffpruneError(f"chunk must be at least 1, got {self.chunk}")
        if self.blocks is not None and (not self.blocks or any(a < 0 or b <= a for a, b in self.blocks)):
            raise DiffpruneError(f"blocks must be ranges first-last with first < last, got {self.blocks}")
        if self.scorer not in ("full", "strided"):
            raise DiffpruneError(f"scorer must be 'full' or 'strided', got '{self.scorer}'")
        if self.source not in SOURCES:
            raise DiffpruneError(f"source must be one of {', '.join(SOURCES)}, got '{self.source}'")
        if self.query_stride < 1:
            raise DiffpruneError(f"query_stride must be at least 1, got {self.query_stride}")
        if self.refresh < 1:
            raise DiffpruneError(f"refresh must be at least 1, got {self.refresh}")
        if self.refresh > 1 and self.method == "tome":
            raise DiffpruneError("refresh reuses a ranking between calls; tome matches tokens anew in every layer")
        if self.source != "attention" and self.method == "tome":
            raise DiffpruneError("source chooses what a pruned token copies; tome unmerges its merged tokens instead")
        if self.merge not in ("self", "self+cross", "all"):
            raise DiffpruneError(f"merge must be self, self+cross or all, got '{self.merge}'")

    def reads_map(self, gwpr_on_map: bool) -> bool:
        """Whether the ranking layer's attention map is read: by the copy source, or by the ranking
        (``gwpr_on_map``: this layer's G-WPR runs on the explicit map)."""
        return self.source == "attention" or (self.method == "atedm" and gwpr_on_map)

    def copy_for(self, transformer: bool) -> str:
        """What recovery copies on this kind of denoiser."""
        return ("delta" if transformer else "state") if self.copy == "auto" else self.copy

    def ratio_at(self, early: bool) -> float:
        if early and self.dsap and self.early_ratio is not None:
            return self.early_ratio
        return self.ratio

    def spec(self) -> str:
        """The spec string of this configuration (fields left at their defaults are omitted)."""
        default = TokenPruningConfig(method=self.method)
        parts = []
        for f in fields(self):
            if f.name == "method" or (f.name != "ratio" and getattr(self, f.name) == getattr(default, f.name)):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool):
                value = "on" if value else "off"
            elif f.name == "blocks":
                value = "+".join(f"{a}-{b}" for a, b in value)
            elif isinstance(value, tuple):
                value = "+".join(str(v) for v in value)
            parts.append(f"{f.name}={value}")
        return self.method + (":" + ",".join(parts) if parts else "")


_BOOL = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _convert(name: str, text: str):
    if name == "dsap":
        if text.lower() not in _BOOL:
            raise DiffpruneError(f"dsap takes on or off, got '{text}'")
        return _BOOL[text.lower()]
    if name == "levels":
        if text.lower() in ("all", "none"):
            return None
        return tuple(int(v) for v in text.split("+"))
    if name == "blocks":
        if text.lower() in ("auto", "none", "default"):
            return None
        ranges = []
        for part in text.split("+"):
            first, dash, last = part.partition("-")
            ranges.append((int(first), int(last)) if dash else (int(first), int(first)))
        return tuple(ranges)
    if name in ("early_ratio", "chunk") and text.lower() in ("auto", "none", "default"):
        return None
    if name in ("ratio", "tau", "early_ratio"):
        return float(text)
    if name in ("iterations", "stride", "seed", "chunk", "query_stride", "refresh"):
        return int(text)
    return text


def parse_spec(spec: str) -> TokenPruningConfig:
    """``method[:key=value,...]``, e.g. ``atedm:ratio=0.63,dsap=on``, ``tome:ratio=0.5``, ``random:ratio=0.4``,
    ``atedm:levels=4,tau=0.25`` (several levels joined with ``+``), ``atedm:ratio=0.5,blocks=2-20+22-26`` (on a
    diffusion transformer; several segments joined with ``+``)."""
    method, _, rest = spec.strip().partition(":")
    known = {f.name for f in fields(TokenPruningConfig)} - {"method"}
    values: dict = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in known:
            raise DiffpruneError(f"bad token pruning option '{item}' in '{spec}' (options: {', '.join(sorted(known))})")
        try:
            values[key] = _convert(key, text.strip())
        except ValueError:
            raise DiffpruneError(f"bad value in '{item}' of '{spec}'") from None
    return TokenPruningConfig(method=method.strip().lower(), **values)


def with_ratio(config: TokenPruningConfig, ratio: float) -> TokenPruningConfig:
    """The same configuration at another ratio (the early-phase ratio scales with it)."""
    early = None if config.early_ratio is None else min(0.99, config.early_ratio * ratio / max(config.ratio, 1e-12))
    return replace(config, ratio=ratio, early_ratio=early)
