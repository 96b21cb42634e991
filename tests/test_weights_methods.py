"""Weight pruning methods: exact counts, hand-checked masks, Wanda/magnitude equivalence, SparseGPT's error."""

import pytest
import torch
from torch import nn

import diffprune
from diffprune.errors import DiffpruneError
from diffprune.weights import (CalibrationConfig, MagnitudeConfig, OWLConfig, RandomConfig, SparseGPTConfig,
                               WandaConfig, make_config, prune)
from diffprune.weights.calibrate import Collector
from diffprune.weights.masks import allocate, global_threshold, lowest, n_of_m, select
from diffprune.weights.owl import block_counts, block_sparsities
from diffprune.weights.sparsegpt import sparsegpt_prune
from diffprune.weights.targets import Target, find_targets
from diffprune.weights.wanda import wanda_prune

FAST_CALIBRATION = CalibrationConfig(num_prompts=4, steps=2, batch_size=4)


def _zeros(targets):
    return sum(int((t.weight == 0).sum()) for t in targets)


def test_magnitude_mask_by_hand():
    w = torch.tensor([[0.5, -0.1, 0.3], [-0.2, 0.05, 0.9]])
    # 50 % of 6 = 3 smallest |w|: 0.05, 0.1, 0.2
    assert lowest(w.abs(), 3).tolist() == [[False, True, False], [True, True, False]]
    # per row, 3 over 2 rows: row 0 loses 2 (0.1, 0.3), row 1 loses 1 (0.05)
    assert select(w.abs(), 3, per_row=True).tolist() == [[False, True, True], [False, True, False]]
    # ties go to the first position
    assert lowest(torch.ones(2, 2), 1).tolist() == [[True, False], [False, False]]


def test_allocate_is_exact_and_proportional():
    sizes = [7, 13, 1000, 3]
    for s in (0.0, 0.1, 0.333, 0.475, 0.5, 0.99):
        counts = allocate(sizes, s)
        assert sum(counts) == round(s * sum(sizes))
        assert all(abs(c - s * n) < 1 for c, n in zip(counts, sizes))


def test_global_threshold_matches_concatenation():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, generator=g).abs() for n in (1000, 5000, 37)]
    tensors[1][:50] = tensors[0][3]  # ties across tensors
    allv = torch.cat(tensors)
    for k in (1, 800, 3018, 6036):
        threshold, ties = global_threshold([lambda t=t: t for t in tensors], [t.numel() for t in tensors], k,
                                           sample=500)
        assert threshold == torch.kthvalue(allv, k).values
        assert int((allv < threshold).sum()) + ties == k


@pytest.mark.parametrize("config", [MagnitudeConfig(0.35), MagnitudeConfig(0.475, scope="global"),
                                    RandomConfig(0.6, seed=3), MagnitudeConfig(0.3, include_conv=True)])
def test_exact_sparsity_per_component(config):
    pipe = diffprune.load("random:tiny-sd")
    result = prune(pipe, {"unet": config, "text_encoder": MagnitudeConfig(0.475)})
    for name, r in result.components.items():
        conf = config if name == "unet" else MagnitudeConfig(0.475)
        targets = find_targets(getattr(pipe, name), include_conv=conf.include_conv)
        assert r.zeros == _zeros(targets) == round(conf.sparsity * r.weights), name
    norms = [m for m in pipe.unet.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    assert all(int((m.weight == 0).sum()) == 0 for m in norms)  # norms never touched
    assert int((pipe.text_encoder.get_input_embeddings().weight == 0).sum()) == 0
    if not config.include_conv:
        assert int((pipe.unet.conv_in.weight == 0).sum()) == 0


def test_random_is_seeded():
    a, b, c = (diffprune.load("random:tiny-sd") for _ in range(3))
    for pipe, seed in ((a, 1), (b, 1), (c, 2)):
        prune(pipe, {"unet": RandomConfig(0.5, seed=seed)})
    wa, wb, wc = (p.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight for p in (a, b, c))
    assert torch.equal(wa == 0, wb == 0) and not torch.equal(wa == 0, wc == 0)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_n_of_m_pattern_is_exact(pattern):
    n, m = (int(x) for x in pattern.split(":"))
    pipe = diffprune.load("random:tiny-sd")
    prune(pipe, {"unet": MagnitudeConfig(0.5, pattern=pattern)})
    for t in find_targets(pipe.unet):
        groups = t.weight.reshape(t.weight.shape[0], -1, m)
        assert bool(((groups != 0).sum(-1) == n).all()), t.name
    # the kept ones are the largest of each group
    scores = torch.tensor([[0.1, -3.0, 2.0, 0.5, 9.0, 8.0, -7.0, 6.0]])
    assert n_of_m(scores.abs(), 2, 4).tolist() == [[True, False, False, True, False, False, True, True]]


def _layer_stats(layer: nn.Module, x: torch.Tensor, hessian: bool):
    target = Target("layer", layer, "g")
    collector = Collector([target], hessian=hessian)
    with collector:
        layer(x)
    return collector.stats["layer"]


def test_statistics_match_hand_computation():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(6, 3)
    x = torch.randn(2, 5, 6, generator=g)
    stats = _layer_stats(lin, x, hessian=True)
    rows = x.reshape(-1, 6)
    assert torch.allclose(stats.column_norms(), (rows.pow(2).mean(0)).sqrt(), atol=1e-6)
    assert torch.allclose(stats.hessian(), 2 * rows.T @ rows / 10, atol=1e-5)
    conv = nn.Conv2d(2, 4, 3, padding=1)
    xc = torch.randn(1, 2, 4, 4, generator=g)
    stats = _layer_stats(conv, xc, hessian=False)
    cols = nn.functional.unfold(xc, 3, padding=1)[0].T  # [16 positions, 18 columns]
    assert torch.allclose(stats.column_norms(), cols.pow(2).mean(0).sqrt(), atol=1e-6)


def test_wanda_equals_magnitude_when_activations_are_uniform():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(16, 8)
    x = torch.ones(4, 16)  # every input column has the same norm
    reference = lin.weight.detach().clone()
    stats = _layer_stats(lin, x, hessian=False)
    wanda_prune(stats, 64, WandaConfig(0.5))
    assert torch.equal(lin.weight == 0, select(reference.abs(), 64, per_row=True))
    # with non-uniform activations the choice differs
    lin2 = nn.Linear(16, 8)
    lin2.weight.data.copy_(reference)
    scale = torch.rand(16, generator=g) * 10
    stats = _layer_stats(lin2, torch.randn(32, 16, generator=g) * scale, hessian=False)
    wanda_prune(stats, 64, WandaConfig(0.5))
    assert not torch.equal(lin2.weight == 0, select(reference.abs(), 64, per_row=True))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_better_than_magnitude(pattern):
    g = torch.Generator().manual_seed(2)
    mix = torch.randn(64, 64, generator=g) / 8 + torch.eye(64)
    x = torch.randn(512, 64, generator=g) @ mix * (torch.rand(64, generator=g) * 3 + 0.1)  # correlated inputs
    dense = nn.Linear(64, 48, bias=False)
    reference = dense.weight.detach().clone()
    k = 48 * 32
    magnitude = reference.clone()
    magnitude[select(reference.abs(), k, MagnitudeConfig(0.5, pattern=pattern).nm)] = 0
    stats = _layer_stats(dense, x, hessian=True)
    sparsegpt_prune(stats, k, SparseGPTConfig(0.5, pattern=pattern, block_size=16))
    pruned = dense.weight.detach()
    assert int((pruned == 0).sum()) == k
    err_sgpt = (x @ (pruned - reference).T).pow(2).mean()
    err_mag = (x @ (magnitude - reference).T).pow(2).mean()
    assert err_sgpt < 0.7 * err_mag, (err_sgpt, err_mag)


def test_owl_block_sparsities_average_to_target_and_counts_are_exact():
    config = OWLConfig(0.5, lam=0.08)
    s = block_sparsities([1.0, 2.0, 5.0, 3.0], config)
    assert abs(sum(s) / 4 - 0.5) < 1e-9 and max(s) - min(s) == pytest.approx(0.16)
    assert s[2] == min(s)  # the block with most outliers keeps most weights
    counts = block_counts([[100, 50], [100, 50], [100, 50], [100, 50]], s, 300)
    assert sum(map(sum, counts)) == 300


@pytest.mark.parametrize("config", [WandaConfig(0.5), SparseGPTConfig(0.5), OWLConfig(0.5, base="wanda"),
                                    SparseGPTConfig(0.5, pattern="2:4")])
def test_calibrated_methods_on_the_testbed_text_encoder(config):
    pipe = diffprune.load("shapes")
    result = prune(pipe, {"text_encoder": config}, FAST_CALIBRATION)
    r = result.components["text_encoder"]
    assert r.zeros == round(0.5 * r.weights)
    assert r.layers == 6 * pipe.text_encoder.config.num_hidden_layers  # q, k, v, out, fc1, fc2 per block


def test_calibrated_unet_pruning_runs_the_sampler_with_step_weights():
    pipe = diffprune.load("shapes")
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    calib = CalibrationConfig(num_prompts=4, steps=3, batch_size=4, groups=2)
    result = prune(pipe, {"unet": WandaConfig(0.3, include_conv=True)}, calib)
    assert len(calls) == 2 * 3  # two packs of blocks, one 3-step sampling run each
    r = result.components["unet"]
    assert r.zeros == round(0.3 * r.weights)
    w = calib.step_weights()
    assert w[0] == pytest.approx(1.2) and w[-1] == pytest.approx(0.8) and w == sorted(w, reverse=True)


@pytest.mark.parametrize("method, sparsity, options, message", [
    ("magnitude", 1.0, {}, "sparsity must be in [0, 1)"),
    ("magnitude", -0.1, {}, "sparsity must be in [0, 1)"),
    ("prune-it", 0.5, {}, "unknown pruning method"),
    ("magnitude", 0.3, {"pattern": "2:4"}, "fixes the sparsity at 0.5"),
    ("magnitude", 0.5, {"pattern": "4:2"}, "0 < N < M"),
    ("magnitude", 0.5, {"scope": "row"}, "scope must be"),
])
def test_bad_configs(method, sparsity, options, message):
    with pytest.raises(DiffpruneError, match=message.replace("[", r"\[").replace(")", r"\)")):
        make_config(method, sparsity, **options)


def test_bad_recipes_change_nothing():
    pipe = diffprune.load("random:tiny-sd")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(DiffpruneError, match="no component 'text_encoder_2'"):
        prune(pipe, {"unet": MagnitudeConfig(0.5), "text_encoder_2": MagnitudeConfig(0.5)})
    with pytest.raises(DiffpruneError, match="OWL"):
        prune(pipe, {"unet": OWLConfig(0.5)})
    odd = nn.Sequential()
    with pytest.raises(DiffpruneError, match="cannot prune a Sequential"):
        find_targets(odd)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())


def test_n_of_m_refuses_a_layer_whose_width_does_not_fit():
    pipe = diffprune.load("random:tiny-sd")
    # conv_in has 4 input channels x 3 x 3 = 36 columns: fits 2:4, not 4:8 ... but 36 % 8 != 0
    with pytest.raises(DiffpruneError, match="conv_in has rows of 36 weights, not a multiple of 8"):
        prune(pipe, {"unet": MagnitudeConfig(0.5, pattern="4:8", include_conv=True)})


def test_large_tensors_select_the_same_weights_as_kthvalue():
    g = torch.Generator().manual_seed(4)
    scores = (torch.randn(1500, 1000, generator=g).abs() * 100).round() / 100  # many ties
    k = 700_001
    flat = scores.reshape(-1)
    threshold = torch.kthvalue(flat, k).values
    expected = flat < threshold
    expected[torch.nonzero(flat == threshold).squeeze(1)[: k - int(expected.sum())]] = True
    mask = lowest(scores, k)
    assert int(mask.sum()) == k and torch.equal(mask.reshape(-1), expected)


def test_two_four_refuses_a_width_that_is_not_a_multiple_of_four():
    from diffprune.weights.targets import check_pattern_fits

    layer = Target("proj", nn.Linear(6, 4), "g")
    with pytest.raises(DiffpruneError, match="unet.proj has rows of 6 weights, not a multiple of 4"):
        check_pattern_fits([layer], (2, 4), "unet")
    check_pattern_fits([Target("ok", nn.Linear(8, 4), "g")], (2, 4), "unet")  # fits: no error


def test_global_scope_handles_zero_sparsity_and_many_exact_zeros():
    pipe = diffprune.load("random:tiny-sd")
    prune(pipe, {"unet": MagnitudeConfig(0.0, scope="global")})  # nothing to prune, no error
    prune(pipe, {"unet": MagnitudeConfig(0.5, scope="global")})
    result = prune(pipe, {"unet": MagnitudeConfig(0.5, scope="global")})  # the threshold is exactly 0 now
    assert result.components["unet"].zeros == round(0.5 * result.components["unet"].weights)
    result = prune(pipe, {"unet": MagnitudeConfig(0.6, scope="global")})
    assert result.components["unet"].zeros == round(0.6 * result.components["unet"].weights)


def test_owl_counts_stay_exact_when_blocks_hit_the_cap():
    s = block_sparsities([0.0, 1.0, 2.0, 9.0], OWLConfig(0.97, lam=0.08))
    counts = block_counts([[1000, 500]] * 4, s, round(0.97 * 6000))
    assert sum(map(sum, counts)) == round(0.97 * 6000)
    assert all(c <= n for ks in counts for c, n in zip(ks, (1000, 500)))
