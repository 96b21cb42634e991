"""``refresh``: U-Net calls between two rankings reuse each block's last kept set and copy sources."""

import pytest
import torch

import diffprune
from diffprune import tokens
from diffprune.errors import DiffpruneError
from diffprune.measure import count_flops, unet_inputs
from diffprune.tokens.schedule import attention_sites


@pytest.fixture(scope="module")
def pipe():
    return diffprune.load("random:tiny-sdxl", seed=0)


def _run(unet, timestep, kwargs):
    with torch.no_grad():
        return unet(**{**kwargs, "timestep": torch.tensor(timestep)})[0]


@pytest.mark.parametrize("scorer", ["strided", "full"])
def test_a_reused_ranking_gives_what_ranking_the_same_input_gives(pipe, scorer):
    kwargs = unet_inputs(pipe.unet, resolution=64, batch=2)
    tokens.apply(pipe, tokens.parse_spec(f"atedm:ratio=0.5,dsap=off,scorer={scorer},refresh=4"))
    try:
        seen = []
        with tokens.observe_kept(pipe, seen.append):
            with tokens.at_timestep(pipe, 500, ranking=True):
                ranked = _run(pipe.unet, 500, kwargs)
            with tokens.at_timestep(pipe, 500, ranking=False):
                reused = _run(pipe.unet, 500, kwargs)
    finally:
        tokens.remove(pipe)
    half = len(seen) // 2
    assert half > 0 and len(seen) == 2 * half
    assert all(torch.equal(a.kept, b.kept) for a, b in zip(seen[:half], seen[half:]))
    if scorer == "strided":  # both calls run every attention through the fused kernel: the same bits
        assert torch.equal(ranked, reused)
    else:  # the ranking call's scoring layer ran the explicit attention
        torch.testing.assert_close(ranked, reused, rtol=1e-4, atol=1e-5)


def test_pipeline_reuses_every_other_call_and_restarts_with_each_run(pipe):
    pipe.set_progress_bar_config(disable=True)
    args = dict(prompt=["a red circle"], num_inference_steps=4, guidance_scale=5.0, height=64, width=64,
                output_type="pt", generator=torch.Generator().manual_seed(0))
    results = {}
    for refresh in (1, 2):
        tokens.apply(pipe, tokens.parse_spec(f"atedm:ratio=0.5,dsap=off,refresh={refresh}"))
        try:
            seen = []
            with tokens.observe_kept(pipe, seen.append):
                first = pipe(**{**args, "generator": torch.Generator().manual_seed(0)}).images
            second = pipe(**{**args, "generator": torch.Generator().manual_seed(0)}).images
        finally:
            tokens.remove(pipe)
        steps = sorted({e.timestep for e in seen}, reverse=True)
        by_step = [[e.kept for e in seen if e.timestep == t] for t in steps]
        results[refresh] = (first, by_step)
        assert len(steps) == 4
        assert torch.equal(first, second)  # a new run ranks afresh: repeated calls give the same images
    _, plain = results[1]
    images, reused = results[2]
    assert all(torch.equal(a, b) for a, b in zip(plain[0], reused[0]))  # both rank at the first call
    for ranking, follower in ((0, 1), (2, 3)):  # calls 1 and 3 reuse calls 0 and 2
        assert all(torch.equal(a, b) for a, b in zip(reused[ranking], reused[follower]))
    assert not torch.equal(images, results[1][0])


def test_reusing_calls_drop_exactly_the_scoring_flops(pipe):
    unet = pipe.unet
    batch, iterations = 2, 5
    kwargs = unet_inputs(unet, resolution=64, batch=batch)
    tokens.apply(pipe, tokens.TokenPruningConfig(ratio=0.5, dsap=False, iterations=iterations, refresh=2))
    try:
        with tokens.at_timestep(pipe, 500, ranking=True):
            ranking = count_flops(unet, **kwargs).total
        with tokens.at_timestep(pipe, 500, ranking=False):
            reusing = count_flops(unet, **kwargs).total
        schedule = tokens.schedule_flops(pipe, 6, resolution=64)
    finally:
        tokens.remove(pipe)
    latent = 64 // 8
    gwpr = sum(iterations * 2 * batch * ((latent // s.level) ** 2) ** 2 for s in attention_sites(unet))
    assert ranking - reusing == gwpr  # G-WPR's products; the map itself costs what the fused kernel costs
    schedule_batch_one = [f.total for f in schedule.per_step]
    assert schedule_batch_one[0::2] == [schedule_batch_one[0]] * 3 and schedule_batch_one[1::2] == [schedule_batch_one[1]] * 3
    assert schedule_batch_one[1] < schedule_batch_one[0]


def test_refresh_is_checked_and_round_trips():
    assert tokens.parse_spec("atedm:ratio=0.5,refresh=3").refresh == 3
    assert tokens.parse_spec(tokens.parse_spec("random:refresh=2").spec()).refresh == 2
    for bad in ("atedm:refresh=0", "tome:ratio=0.5,refresh=2"):
        with pytest.raises(DiffpruneError):
            tokens.parse_spec(bad)


def test_refresh_is_refused_on_a_diffusion_transformer():
    dit = diffprune.load("random:tiny-pixart", seed=0)
    with pytest.raises(DiffpruneError, match="refresh"):
        tokens.apply(dit, tokens.parse_spec("atedm:ratio=0.5,refresh=2"))
