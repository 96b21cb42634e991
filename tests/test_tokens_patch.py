"""apply/remove of token pruning on real diffusers U-Nets (tiny SD-1.5-style and SD-XL-style builds): exactness
at ratio 0, complete removal, idempotence, determinism with CFG and batch > 1, and FLOPs as predicted."""

import pytest
import torch

import diffprune
from diffprune import tokens
from diffprune.errors import DiffpruneError
from diffprune.measure import count_flops, unet_inputs
from diffprune.tokens.schedule import attention_sites

SPECS = ["atedm:ratio=0.5", "random:ratio=0.5", "tome:ratio=0.5", "atedm:ratio=0.5,copy=delta",
         "atedm:ratio=0.5,score=cross", "atedm:ratio=0.5,placement=layer", "tome:ratio=0.5,merge=all",
         "atedm:ratio=0.5,scorer=strided", "random:ratio=0.5,scorer=strided,query_stride=3",
         "atedm:ratio=0.5,refresh=2", "atedm:ratio=0.5,scorer=strided,refresh=3", "atedm:ratio=0.5,source=nearest",
         "random:ratio=0.5,source=similarity"]


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sdxl"])
def pipe(request):
    return diffprune.load(f"random:{request.param}", seed=0)


def _images(pipe, **kwargs):
    args = dict(prompt=["a red circle", "a blue square"], num_inference_steps=3, guidance_scale=5.0,
                height=64, width=64, output_type="pt",
                generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    args.update(kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe(**args).images


def _unet_out(unet, timestep=400):
    kwargs = unet_inputs(unet, resolution=64, batch=2)
    kwargs["timestep"] = torch.tensor(timestep)
    with torch.no_grad():
        return unet(**kwargs)[0]


def _hook_counts(unet):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())


def test_strided_scorer_at_stride_one_is_the_exact_scorer(pipe):
    """Every query sampled: the same ranking and recovery as the explicit map; only the attention output comes
    from the fused kernel instead of the chunked one, so the outputs agree to float precision."""
    kept = {}
    outs = {}
    for spec in ("atedm:ratio=0.5,dsap=off", "atedm:ratio=0.5,dsap=off,scorer=strided,query_stride=1"):
        tokens.apply(pipe, tokens.parse_spec(spec))
        seen = []
        with tokens.observe_kept(pipe, seen.append):
            outs[spec] = _unet_out(pipe.unet)
        tokens.remove(pipe)
        kept[spec] = [event.kept for event in seen]
    exact, strided = kept.values()
    assert len(exact) == len(strided) > 0 and all(torch.equal(a, b) for a, b in zip(exact, strided))
    torch.testing.assert_close(*outs.values(), rtol=1e-4, atol=1e-5)


def test_ratio_zero_is_bit_identical_to_the_unpatched_pipeline(pipe):
    reference = _images(pipe)
    for spec in ("atedm:ratio=0", "random:ratio=0", "tome:ratio=0", "atedm:ratio=0,scorer=strided"):
        tokens.apply(pipe, tokens.parse_spec(spec))
        try:
            assert torch.equal(_images(pipe), reference), spec
        finally:
            tokens.remove(pipe)


@pytest.mark.parametrize("spec", SPECS)
def test_pruning_changes_the_output_and_remove_restores_it_exactly(pipe, spec):
    unet = pipe.unet
    reference = _unet_out(unet)
    processors = dict(unet.attn_processors)
    hooks = _hook_counts(unet)
    tokens.apply(pipe, tokens.parse_spec(spec))
    assert tokens.applied_config(pipe) == tokens.parse_spec(spec)
    assert tokens.parse_spec(tokens.applied_config(pipe).spec()) == tokens.parse_spec(spec)
    pruned = _unet_out(unet)
    assert pruned.shape == reference.shape and torch.isfinite(pruned).all()
    assert not torch.equal(pruned, reference)
    tokens.remove(pipe)
    assert tokens.applied_config(pipe) is None
    assert torch.equal(_unet_out(unet), reference)
    assert _hook_counts(unet) == hooks
    assert all(unet.attn_processors[k] is v for k, v in processors.items())
    assert not any("forward" in m.__dict__ for m in unet.modules())
    tokens.remove(pipe)  # removing twice is harmless


def test_apply_is_idempotent(pipe):
    config = tokens.parse_spec("atedm:ratio=0.5")
    tokens.apply(pipe, config)
    once, hooks = _unet_out(pipe.unet), _hook_counts(pipe.unet)
    tokens.apply(pipe, config)
    try:
        assert _hook_counts(pipe.unet) == hooks
        assert torch.equal(_unet_out(pipe.unet), once)
        tokens.apply(pipe, tokens.parse_spec("tome:ratio=0.5"))  # a new config replaces the old one
        assert tokens.applied_config(pipe).method == "tome"
    finally:
        tokens.remove(pipe)


@pytest.mark.parametrize("spec", ["atedm:ratio=0.5", "random:ratio=0.5", "tome:ratio=0.5", "atedm:ratio=0.5,refresh=2"])
def test_pipeline_calls_are_deterministic_with_cfg_and_batch_two(pipe, spec):
    tokens.apply(pipe, tokens.parse_spec(spec))
    try:
        first, second = _images(pipe), _images(pipe)
        alone = _images(pipe, prompt=["a blue square"], generator=[torch.Generator().manual_seed(1)])
    finally:
        tokens.remove(pipe)
    assert first.shape == (2, 3, 64, 64)
    assert torch.equal(first, second)
    # a sample's image does not depend on what else is in the batch
    assert torch.allclose(alone[0], first[1], atol=1e-4)


def test_random_pruning_depends_on_its_seed(pipe):
    outs = []
    for seed in (0, 1):
        tokens.apply(pipe, tokens.TokenPruningConfig(method="random", ratio=0.5, seed=seed))
        outs.append(_unet_out(pipe.unet))
        tokens.remove(pipe)
    assert not torch.equal(*outs)


def test_copy_source_changes_recovery_not_ranking_and_skips_the_map_when_unread(pipe, monkeypatch):
    """``source`` picks what a pruned token copies: the kept sets stay those of the ranking, the output changes;
    with random ranking and a source other than attention, no explicit attention map is built."""
    from diffprune.tokens.attention import MapRequest

    taken = []
    original = MapRequest.take
    monkeypatch.setattr(MapRequest, "take", lambda self: taken.append(1) or original(self))
    kept, outs, maps = {}, {}, {}
    for source in ("attention", "nearest", "similarity"):
        tokens.apply(pipe, tokens.TokenPruningConfig(method="random", ratio=0.5, dsap=False, source=source))
        seen, taken[:] = [], []
        with tokens.observe_kept(pipe, seen.append):
            outs[source] = _unet_out(pipe.unet)
        tokens.remove(pipe)
        kept[source], maps[source] = [e.kept for e in seen], len(taken)
    assert maps["attention"] > 0 and maps["nearest"] == maps["similarity"] == 0
    assert len(kept["attention"]) > 0
    for other in ("nearest", "similarity"):
        assert all(torch.equal(a, b) for a, b in zip(kept["attention"], kept[other]))
        assert not torch.equal(outs[other], outs["attention"])


def _layer_flops(c, n, ctx_len, ctx_dim, batch):
    """FLOPs (2 x MAC) of one SD transformer layer on n tokens of width c, by hand."""
    attn1 = 4 * n * c * c + 2 * n * n * c
    attn2 = 2 * n * c * c + 2 * ctx_len * ctx_dim * c + 2 * n * ctx_len * c
    ff = n * c * 8 * c + n * 4 * c * c  # GEGLU: c -> 2 x 4c, then 4c -> c
    return 2 * batch * (attn1 + attn2 + ff)


def test_block_placement_flops_drop_as_predicted():
    pipe = diffprune.load("random:tiny-sdxl", seed=0)
    unet = pipe.unet
    batch, resolution, iterations, ratio = 2, 64, 5, 0.5
    kwargs = unet_inputs(unet, resolution=resolution, batch=batch)
    base = count_flops(unet, **kwargs).total
    tokens.apply(pipe, tokens.TokenPruningConfig(ratio=ratio, dsap=False, iterations=iterations))
    with tokens.at_timestep(pipe, 500):
        pruned = count_flops(unet, **kwargs).total
    tokens.remove(pipe)
    predicted = base
    latent = resolution // 8
    modules = dict(unet.named_modules())
    ctx_len, ctx_dim = kwargs["encoder_hidden_states"].shape[1:]
    for site in attention_sites(unet):
        n = (latent // site.level) ** 2
        keep = n - int(ratio * n)
        c = modules[site.name].transformer_blocks[0].norm1.normalized_shape[0]
        later = site.depth - 1
        predicted -= later * (_layer_flops(c, n, ctx_len, ctx_dim, batch) - _layer_flops(c, keep, ctx_len, ctx_dim, batch))
        predicted += iterations * 2 * batch * n * n  # G-WPR: one (1 x N) x (N x N) product per iteration
    assert pruned == predicted
    assert pruned < base


def test_schedule_flops_follow_dsap():
    pipe = diffprune.load("random:tiny-sdxl", seed=0)
    base = tokens.schedule_flops(pipe, 10, resolution=64)
    tokens.apply(pipe, tokens.TokenPruningConfig(ratio=0.5, tau=0.3))
    dsap = tokens.schedule_flops(pipe, 10, resolution=64)
    tokens.apply(pipe, tokens.TokenPruningConfig(ratio=0.5, dsap=False))
    flat = tokens.schedule_flops(pipe, 10, resolution=64)
    tokens.remove(pipe)
    early = [f.total for t, f in zip(dsap.timesteps, dsap.per_step) if t >= 700]
    late = [f.total for t, f in zip(dsap.timesteps, dsap.per_step) if t < 700]
    assert early and late and min(early) > max(late)
    assert len({f.total for f in flat.per_step}) == 1 and flat.per_step[0].total == late[0]
    assert flat.mean_tflops < dsap.mean_tflops < base.mean_tflops


def test_apply_refuses_what_it_cannot_patch():
    with pytest.raises(DiffpruneError):
        tokens.apply(torch.nn.Linear(2, 2), tokens.TokenPruningConfig())
