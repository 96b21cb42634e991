"""The diffusion-transformer claims of ``bench --claims`` on tiny architectures: each measurement against an
independent count."""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch

from diffprune.archs import arch_spec, build_denoiser
from diffprune.bench import claims_dit
from diffprune.measure import count_flops, denoiser_inputs


def _config(**kw):
    base = dict(flops_resolution=256, modulation_arch="tiny-flux", depth_arch="tiny-pixart", dit_source="shapes-dit",
                prompts=2, seed=0, steps=2, calibration_prompts=2)
    return SimpleNamespace(**{**base, **kw})


def test_depth_claim_matches_a_model_built_with_half_the_blocks():
    out: dict = {}
    claim = claims_dit.depth_claim(_config(), out)
    spec = arch_spec("tiny-pixart")["transformer"]
    n = spec["num_layers"]
    assert out["depth_halving"]["blocks"] == n and out["depth_halving"]["removed"] == n // 2
    import diffusers

    with torch.device("meta"):
        full = getattr(diffusers, spec["_class_name"]).from_config({k: v for k, v in spec.items()
                                                                   if not k.startswith("_")})
        half = getattr(diffusers, spec["_class_name"]).from_config({**{k: v for k, v in spec.items()
                                                                      if not k.startswith("_")},
                                                                   "num_layers": n - n // 2})
    flops = [count_flops(m, **denoiser_inputs(m, resolution=256)).total for m in (full, half)]
    assert out["depth_halving"]["ratio"] == flops[0] / flops[1] > 1
    assert claim.paper == "TinyFusion" and claim.holds == (flops[0] / flops[1] >= 1.9)


def test_modulation_claim_counts_the_adaln_linears():
    out: dict = {}
    claim = claims_dit.modulation_claim(_config(), out)
    model = build_denoiser("tiny-flux", device="meta")
    pattern = re.compile(r"(^|\.)norm(1|1_context)?\.linear\.|^norm_out\.linear\.")
    by_hand = sum(p.numel() for name, p in model.named_parameters() if pattern.search(name))
    total = sum(p.numel() for p in model.parameters())
    assert out["modulation"]["params"] == by_hand > 0
    assert abs(out["modulation"]["param_share"] - by_hand / total) < 1e-6
    assert 0 < out["modulation"]["flop_share"] < 0.05
    assert claim.holds == (0.25 <= by_hand / total <= 0.30 and out["modulation"]["flop_share"] < 0.01)


def test_obs_claim_is_undecided_without_the_dit_testbed(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPRUNE_TESTBED_DIT", str(tmp_path))  # a folder without a pipeline
    bar = SimpleNamespace(n=0, update=lambda k=1: setattr(bar, "n", bar.n + k))
    claim = claims_dit.obs_claim(_config(), {}, bar)
    assert claim.holds is None and claim.verdict == "n/a" and "shapes-dit" in claim.note
    assert bar.n == claims_dit.EVALUATIONS
