"""Token pruning on diffusion transformers (PixArt, SD3, Flux, Sana): the apply/remove contract, what runs on which
tokens, rotary positions that travel with their tokens, the scorers against hand-computed maps, FLOPs against a
hand count, and composition with diffusers' first-block cache."""

from __future__ import annotations

import pytest
import torch

import diffprune
from diffprune import archs, tokens
from diffprune.errors import DiffpruneError
from diffprune.measure import count_flops, denoiser_inputs
from diffprune.tokens import dit_scoring as scoring
from diffprune.tokens import gwpr, recovery
from diffprune.tokens.dit_patch import PerSampleRotary

DEPTHS = {"tiny-pixart": {"num_layers": 5}, "tiny-sd3": {"num_layers": 5}, "tiny-sana": {"num_layers": 5},
          "tiny-flux": {"num_layers": 2, "num_single_layers": 3}}
SPECS = ["atedm:ratio=0.5", "atedm:ratio=0.5,scorer=strided", "random:ratio=0.5", "tome:ratio=0.5",
         "atedm:ratio=0.5,copy=state", "atedm:ratio=0.5,source=nearest", "random:ratio=0.5,source=similarity"]


def _model(name: str, seed: int = 1):
    """The tiny architecture with five blocks (the default segment needs four or more)."""
    base = archs.build_denoiser(name)
    torch.manual_seed(seed)
    return type(base).from_config({**base.config, **DEPTHS[name]}).eval().requires_grad_(False)


def _inputs(model, batch: int = 2, seed: int = 0):
    name = type(model).__name__
    factor = 8 if name == "SanaTransformer2DModel" else 4
    x = denoiser_inputs(model, resolution=64, vae_scale_factor=factor, text_length=6, batch=batch, seed=seed)
    if name == "FluxTransformer2DModel":  # the pipeline's position ids: (0, row, column) of an 8 x 8 grid
        rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
        x["img_ids"] = torch.stack([torch.zeros(64), rows.flatten().float(), cols.flatten().float()], 1)
    return x


@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_ratio_zero_is_bit_identical_apply_is_idempotent_and_remove_restores(name):
    model = _model(name)
    x = _inputs(model)
    with torch.no_grad():
        base = model(**x)[0]
        tokens.apply(model, tokens.parse_spec("atedm:ratio=0"))
        assert torch.equal(model(**x)[0], base)
        for spec in SPECS:
            config = tokens.parse_spec(spec)
            tokens.apply(model, config)
            hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
            tokens.apply(model, config)  # idempotent: the second apply replaces the first
            assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
            first, again = model(**x)[0], model(**x)[0]
            assert torch.equal(first, again), spec  # seeded: the same call gives the same output
            assert not torch.equal(first, base), spec
            assert tokens.applied_config(model) == config
        tokens.remove(model)
        assert tokens.applied_config(model) is None
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        assert torch.equal(model(**x)[0], base)


def test_later_blocks_of_a_segment_run_on_the_kept_image_tokens_only():
    model = _model("tiny-pixart")
    x = _inputs(model)
    seen = {}
    for i, block in enumerate(model.transformer_blocks):
        block.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].shape[1]))
    tokens.apply(model, tokens.TokenPruningConfig(ratio=0.5, blocks=((1, 3),), dsap=False))
    with torch.no_grad():
        out = model(**x)[0]
    n = 8 * 8
    assert seen == {0: n, 1: n, 2: n // 2, 3: n // 2, 4: n}  # block 1 ranks; 2 and 3 run on half; refilled after 3
    assert out.shape == model(**x)[0].shape


def test_dsap_early_steps_spare_the_first_pruned_and_the_last_block_of_each_segment():
    model = _model("tiny-pixart")
    tokens.apply(model, tokens.TokenPruningConfig(ratio=0.5, blocks=((0, 3),), tau=0.3))
    runtime = tokens.active_patch(model).runtime
    assert runtime.plan(999.0) == (((1, 2), 0.5),) and runtime.plan(500.0) == (((0, 3), 0.5),)
    tokens.apply(model, tokens.TokenPruningConfig(ratio=0.5, blocks=((1, 2),), tau=0.3))
    assert tokens.active_patch(model).runtime.plan(999.0) == ((None, 0.5),)  # nothing left to prune early


def test_rotary_positions_travel_with_the_kept_tokens():
    """A Flux double block run on kept image tokens, with the rotary rows :func:`rotary_for` gathers, equals the
    same block run on every token with the pruned ones masked out of the attention, at the kept positions."""
    model = _model("tiny-flux")
    x = _inputs(model, batch=1)
    tokens.apply(model, tokens.TokenPruningConfig(ratio=0.5, blocks=((0, 2),), dsap=False))
    runtime = tokens.active_patch(model).runtime
    tokens.remove(model)
    block, text, n, width = model.transformer_blocks[1], 6, 64, model.inner_dim
    gen = torch.Generator().manual_seed(3)
    image, context = torch.randn(1, n, width, generator=gen), torch.randn(1, text, width, generator=gen)
    temb = torch.randn(1, width, generator=gen)
    ids = torch.cat([torch.zeros(text, 3), x["img_ids"]])
    rotary = model.pos_embed(ids)
    kept = torch.randperm(n, generator=gen)[: n // 2].sort().values.unsqueeze(0)
    allowed = torch.zeros(text + n, dtype=torch.bool)
    allowed[:text] = True
    allowed[text + kept[0]] = True
    mask = allowed.expand(1, 1, text + n, text + n)
    with torch.no_grad():
        _, full = block(image, context, temb, rotary, {"attention_mask": mask})
        _, part = block(recovery.gather_tokens(image, kept), context, temb, runtime.rotary_for(rotary, text, kept))
    torch.testing.assert_close(part, recovery.gather_tokens(full, kept), rtol=1e-4, atol=1e-5)
    # two samples keeping different tokens get rotary rows per sample
    other = torch.arange(0, n, 2).unsqueeze(0)
    both = runtime.rotary_for(rotary, text, torch.cat([kept, other]))
    assert isinstance(both, PerSampleRotary) and both.cos.shape == (2, text + n // 2, rotary[0].shape[-1])
    assert torch.equal(both.cos[1, text:], rotary[0][text:][other[0]])


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-pixart"])
def test_a_sample_does_not_depend_on_its_batch_neighbours(name):
    model = _model(name)
    tokens.apply(model, tokens.parse_spec("atedm:ratio=0.5"))
    x = _inputs(model, batch=2)
    with torch.no_grad():
        together = model(**x)[0]
        for b in range(2):
            alone = {k: (v[b:b + 1] if isinstance(v, torch.Tensor) and v.shape[0] == 2 and k not in
                         ("img_ids", "txt_ids") else v) for k, v in x.items()}
            torch.testing.assert_close(model(**alone)[0], together[b:b + 1], rtol=1e-4, atol=1e-5)


def _explicit(q, k, linear=False):
    logits = q @ k.transpose(-1, -2)
    if linear:
        weights = q.relu() @ k.relu().transpose(-1, -2)
        weights = weights / weights.sum(-1, keepdim=True)
    else:
        weights = (logits * q.shape[-1] ** -0.5).softmax(-1)
    return weights.mean(1)


@pytest.mark.parametrize("linear", [False, True])
def test_scorers_match_the_explicit_map(linear):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 36, 8, generator=gen), torch.randn(2, 3, 36, 8, generator=gen)
    full = _explicit(q, k, linear)
    rows = scoring.attention_rows(q, k, None, linear=linear)
    torch.testing.assert_close(rows, full)
    exact = gwpr.gwpr_scores(full, 5)
    torch.testing.assert_close(scoring.gwpr_from_rows(rows, None, 5), exact)
    if linear:
        torch.testing.assert_close(scoring.linear_gwpr(q, k, 5), exact, rtol=1e-4, atol=1e-7)
    kept, pruned = scoring.choose(exact, 20)
    assert torch.equal(scoring.copy_sources(rows, None, None, kept, pruned),
                       recovery.most_similar_kept(full, kept, pruned))
    # strided: the rows of one query per 2 x 2 cell; a pruned token copies what its cell's query attends to most
    picked, cells = scoring.strided_queries(6, 6, 2)
    assert picked.tolist() == [0, 2, 4, 12, 14, 16, 24, 26, 28] and cells[7].item() == 0 and cells[35].item() == 8
    sub = scoring.attention_rows(q, k, picked, linear=linear)
    torch.testing.assert_close(sub, full[:, picked])
    for b in range(2):  # the strided power iteration, written out: sampled queries weighted by their importance
        weights = [1 / 9] * 9
        for _ in range(5):
            scores = [sum(weights[j] * full[b, picked[j], i].item() for j in range(9)) for i in range(36)]
            total = sum(scores[t] for t in picked.tolist())
            weights = [scores[t] / total for t in picked.tolist()]
        torch.testing.assert_close(scoring.gwpr_from_rows(sub, picked, 5)[b], torch.tensor(scores))
    sources = scoring.copy_sources(sub, picked, cells, kept, pruned)
    for b in range(2):
        for p, token in enumerate(pruned[b].tolist()):
            query = picked[cells[token]].item()
            want = (kept[b] == query).nonzero()
            best = want[0, 0] if len(want) else full[b, query, kept[b]].argmax()
            assert sources[b, p] == best


def test_copy_sources_by_state_similarity_and_by_grid_distance():
    # a 3 x 3 grid; kept tokens 0, 4, 8 (the diagonal)
    kept, pruned = torch.tensor([[0, 4, 8]]), torch.tensor([[1, 2, 3, 5, 6, 7]])
    # squared distances to (0,0), (1,1), (2,2): 1 -> 1, 1, 5 (tie: the lower index); 2 -> 4, 2, 4; 3 -> 1, 1, 5;
    # 5 -> 5, 1, 1; 6 -> 4, 2, 4; 7 -> 5, 1, 1
    assert scoring.nearest_sources(3, 3, kept, pruned).tolist() == [[0, 1, 0, 1, 1, 1]]
    # similarity: cosine, so the scale of a state does not matter
    states = torch.zeros(1, 9, 2)
    states[0, [0, 4, 8]] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    states[0, [1, 2, 3, 5, 6, 7]] = torch.tensor([[5.0, 1.0], [0.1, 0.3], [-2.0, 1.9], [-2.0, -0.5], [0.0, -1.0],
                                                  [1.0, 1.0]])
    assert scoring.similar_sources(states, kept, pruned).tolist() == [[0, 1, 2, 2, 0, 0]]
    # ([0,-1] is as far from [1,0] as from [-1,0]: the lower index; [1,1] ties 0 and 4: token 0)


def test_copy_source_options_cost_what_they_compute():
    """``source=nearest`` with random ranking builds no attention map; ``similarity`` adds one (P x K x C)
    product of the ranking block's outputs."""
    model = _model("tiny-pixart")
    batch, text, n, c = 2, 6, 64, model.inner_dim
    x = denoiser_inputs(model, resolution=64, vae_scale_factor=4, text_length=text, batch=batch)
    base = count_flops(model, **x).total
    saved = 2 * (_block_flops(n, c, text, batch) - _block_flops(n // 2, c, text, batch))
    tokens.apply(model, tokens.TokenPruningConfig(method="random", ratio=0.5, blocks=((1, 3),), source="nearest"))
    assert count_flops(model, **x).total == base - saved
    tokens.apply(model, tokens.TokenPruningConfig(method="random", ratio=0.5, blocks=((1, 3),), source="similarity"))
    assert count_flops(model, **x).total == base - saved + 2 * batch * (n // 2) * (n // 2) * c
    tokens.apply(model, tokens.TokenPruningConfig(method="random", ratio=0.5, blocks=((1, 3),)))
    assert count_flops(model, **x).total == base - saved + 2 * batch * n * n * c  # the map, for the copy source


def _block_flops(n, c, text, batch):
    """FLOPs (2 x MAC) of one PixArt block on n image tokens of width c with ``text`` caption tokens, by hand."""
    attn1 = 4 * n * c * c + 2 * n * n * c
    attn2 = 2 * n * c * c + 2 * text * c * c + 2 * n * text * c
    ff = 2 * n * c * 4 * c
    return 2 * batch * (attn1 + attn2 + ff)


def test_flops_drop_by_the_hand_count():
    model = _model("tiny-pixart")
    batch, text, n, c, iterations = 2, 6, 64, model.inner_dim, 5
    x = denoiser_inputs(model, resolution=64, vae_scale_factor=4, text_length=text, batch=batch)
    base = count_flops(model, **x).total
    tokens.apply(model, tokens.TokenPruningConfig(ratio=0.5, blocks=((1, 3),), iterations=iterations))
    pruned = count_flops(model, **x).total
    keep = n // 2
    saved = 2 * (_block_flops(n, c, text, batch) - _block_flops(keep, c, text, batch))
    scorer = 2 * batch * n * n * c + iterations * 2 * batch * n * n  # the map's logits, then G-WPR's products
    assert pruned == base - saved + scorer
    tokens.apply(model, tokens.TokenPruningConfig(ratio=0.5, blocks=((1, 3),), scorer="strided"))
    strided = count_flops(model, **x).total
    assert strided == base - saved + 2 * batch * (n // 4) * n * c + iterations * 2 * batch * (n // 4) * n


def test_schedule_flops_and_ratio_for_flops_on_a_pipeline():
    pipe = diffprune.load("random:tiny-pixart", seed=0)
    base = tokens.schedule_flops(pipe, 4, resolution=32).mean_tflops
    with pytest.raises(DiffpruneError, match="4 or more"):
        tokens.apply(pipe, tokens.parse_spec("atedm:ratio=0.5"))  # two blocks: no default segment
    tokens.apply(pipe, tokens.parse_spec("atedm:ratio=0.5,blocks=0-1"))
    assert tokens.schedule_flops(pipe, 4, resolution=32).mean_tflops < base
    tokens.remove(pipe)
    ratio, reached = tokens.ratio_for_flops(pipe, tokens.parse_spec("random:blocks=0-1"), base * 0.97, 4,
                                            resolution=32)
    assert 0 < ratio < 1 and reached <= base * 0.97 * 1.002 and tokens.applied_config(pipe) is None


def test_a_pipeline_generates_with_dit_token_pruning_and_records_it():
    pipe = diffprune.load("random:tiny-pixart", seed=0)
    pipe.set_progress_bar_config(disable=True)
    result = tokens.prune(pipe, tokens.parse_spec("tome:ratio=0.5,blocks=0-1"))
    assert result.sites == 2 and "tome" in result.summary()
    image = pipe("a red square", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 use_resolution_binning=False, output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_options_of_the_other_denoiser_kind_are_refused():
    with pytest.raises(DiffpruneError, match="diffusion transformers only"):
        tokens.apply(archs.build_denoiser("tiny-sd"), tokens.parse_spec("atedm:blocks=1-2"))
    with pytest.raises(DiffpruneError, match="unmerges"):
        tokens.parse_spec("tome:source=similarity")
    with pytest.raises(DiffpruneError, match="source must be one of"):
        tokens.parse_spec("atedm:source=closest")
    model = _model("tiny-pixart")
    with pytest.raises(DiffpruneError, match="U-Nets only"):
        tokens.apply(model, tokens.parse_spec("atedm:levels=2"))
    with pytest.raises(DiffpruneError, match="blocks 0-4"):
        tokens.apply(model, tokens.parse_spec("atedm:blocks=2-7"))
    with pytest.raises(DiffpruneError, match="must not overlap"):
        tokens.apply(model, tokens.parse_spec("atedm:blocks=0-2+2-4"))
    assert tokens.applied_config(model) is None  # a refused apply leaves nothing behind


def test_first_block_cache_composes_with_token_pruning():
    """diffusers' first-block cache (``enable_cache``) on Flux, with token pruning on the blocks it does not
    watch: at ratio 0 the outputs are the cache's own; pruned, both run; removing the patch leaves the cache."""
    from diffusers.hooks import FirstBlockCacheConfig

    model = _model("tiny-flux")
    x, y = _inputs(model, seed=0), _inputs(model, seed=0)
    y["hidden_states"] = x["hidden_states"] + 1e-3  # close enough for the cache to reuse the tail blocks
    model.enable_cache(FirstBlockCacheConfig(threshold=0.5))

    def run():
        outs = []
        with torch.no_grad():
            for inputs in (x, y):
                with model.cache_context("cond"):
                    outs.append(model(**inputs)[0])
        model._reset_stateful_cache()
        return outs

    cached = run()
    tokens.apply(model, tokens.parse_spec("atedm:ratio=0"))
    assert all(torch.equal(a, b) for a, b in zip(run(), cached))
    tokens.apply(model, tokens.parse_spec("atedm:ratio=0.5,dsap=off"))
    both = run()
    assert not torch.equal(both[0], cached[0]) and all(torch.isfinite(o).all() for o in both)
    tokens.remove(model)
    assert all(torch.equal(a, b) for a, b in zip(run(), cached))
    model.disable_cache()
    with torch.no_grad():
        assert not torch.equal(model(**y)[0], cached[1])  # the second call did reuse the cached tail


def test_a_saved_dit_pipeline_carries_its_token_pruning_and_load_installs_it(tmp_path):
    pipe = diffprune.load("random:tiny-pixart", seed=0)
    config = tokens.parse_spec("atedm:ratio=0.5,blocks=0-1")
    tokens.prune(pipe, config)
    back = diffprune.load(diffprune.save(pipe, tmp_path / "saved"))
    assert tokens.applied_config(back) == config


def test_flux_flops_count_on_meta_with_a_batch():
    """On the meta device the kept sets have no values; every sample is counted like the first."""
    model = _model("tiny-flux")
    sizes = dict(resolution=64, batch=2, vae_scale_factor=4, text_length=6)
    base = tokens.schedule_flops(model, 3, **sizes).mean_tflops
    tokens.apply(model, tokens.parse_spec("atedm:ratio=0.5,blocks=0-3"))
    assert tokens.schedule_flops(model, 3, **sizes).mean_tflops < base
