"""Distillation of block-pruned diffusion transformers: each family's conditioning, noising and call, features
matched to the teacher's blocks they came from, and PPCL's token-normalised alignment loss."""

from __future__ import annotations

import copy

import pytest
import torch

import diffprune
from diffprune import layers
from diffprune.distill import DistillConfig, distill, matched_sites, shapes_data
from diffprune.distill.denoising import Denoising, pack, unpack
from diffprune.distill.losses import token_normalized_feature_terms


def _pipe(name: str):
    pipe = diffprune.load(f"random:{name}", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_flux_packing_round_trips_and_matches_the_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 8, 6)
    assert torch.equal(unpack(pack(x), 8, 6), x)
    # diffusers' own packing of the same latents (its static helper), as sampling feeds the transformer
    assert torch.equal(pack(x), FluxPipeline._pack_latents(x, 2, 4, 8, 6))


def test_token_normalised_loss_by_hand():
    s, t = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]]), torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    # token 1: |(1,0)-(2,0)|^2 / |(2,0)|^2 = 1/4; token 2: |(0,3)-(0,1)|^2 / 1 = 4; mean 2.125
    assert float(token_normalized_feature_terms([s], [t])[0]) == pytest.approx(2.125, rel=1e-5)
    maps = torch.randn(2, 3, 4, 4)
    tokens = maps.flatten(2).transpose(1, 2)
    a = token_normalized_feature_terms([maps], [maps * 2])[0]
    b = token_normalized_feature_terms([tokens], [tokens * 2])[0]
    assert float(a) == pytest.approx(float(b)) == pytest.approx(0.25, rel=1e-4)


def test_pruned_blocks_match_the_teacher_blocks_they_came_from():
    teacher = _pipe("tiny-flux")
    student = copy.deepcopy(teacher)
    layers.prune(student, layers.LayerPruningConfig(ratio=0.2, criterion="random", seed=3))
    removed = student._diffprune["history"][-1]["removed"]
    pairs = matched_sites(student.transformer, teacher.transformer, "stages", student._diffprune["history"])
    kept = {"transformer_blocks": [i for i in range(2) if f"transformer_blocks.{i}" not in removed],
            "single_transformer_blocks": [i for i in range(3) if f"single_transformer_blocks.{i}" not in removed]}
    expected = [(f"{k}.{new}", f"{k}.{old}") for k, v in kept.items() for new, old in enumerate(v)]
    assert pairs == expected and len(pairs) < 5
    for s, t in pairs:  # the student's block is the teacher's, renumbered
        a = student.transformer.get_submodule(s).state_dict()
        b = teacher.transformer.get_submodule(t).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # blocks removed from the bare transformer leave no history: refused, not matched block i to block i
    bare = copy.deepcopy(teacher.transformer)
    layers.remove_units(bare, ["transformer_blocks.0"])
    with pytest.raises(diffprune.DiffpruneError, match="history"):
        matched_sites(bare, teacher.transformer, "stages", [])


@pytest.mark.parametrize("name", ["tiny-pixart", "tiny-sd3", "tiny-flux", "tiny-sana"])
@pytest.mark.parametrize("feature_kd", ["normalized", "token-normalized"])
def test_distilling_a_block_pruned_transformer(name, feature_kd):
    teacher = _pipe(name)
    student = copy.deepcopy(teacher)
    layers.prune(student, layers.LayerPruningConfig(ratio=0.2, criterion="magnitude"))
    before = {k: v.clone() for k, v in student.transformer.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.transformer.state_dict().items()}
    data = shapes_data(teacher, n=8, seed=0)
    config = DistillConfig(steps=3, batch_size=4, lr=1e-3, feature_kd=feature_kd, warmup_steps=0, log_every=1)
    result = distill(student, teacher, data, config, progress=False)
    assert len(result.log) == 3 and result.sites
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in result.log)
    assert all(e["output_kd"] > 0 and any(k.startswith("feat/") for k in e) for e in result.log)
    after = student.transformer.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.transformer.state_dict().items())
    assert student._diffprune["history"][-1]["step"] == "distill"


@pytest.mark.parametrize("name,flow", [("tiny-sd3", True), ("tiny-pixart", False), ("tiny-sana", True)])
def test_the_task_target_is_the_family_s_own(name, flow):
    pipe = _pipe(name)
    den = Denoising.of(pipe)
    assert den.flow == flow
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    noisy, t_in, target = den.noise(sched, x0, noise, torch.tensor([0, 500]), 1000)
    if flow:  # x_s = (1 - s) x0 + s noise, target noise - x0, timestep 1000 s
        assert torch.allclose(noisy[1], 0.5 * x0[1] + 0.5 * noise[1]) and torch.equal(noisy[0], x0[0])
        assert torch.equal(target, noise - x0) and t_in.tolist() == [0.0, 500.0]
    else:
        assert torch.equal(noisy, sched.add_noise(x0, noise, torch.tensor([0, 500])))


def test_conditioning_is_what_sampling_feeds_the_transformer():
    """Training and calibration encode prompts as the pipeline's defaults do: SD3 with CLIP's 77 and T5's 256
    tokens, Sana with its complex human instruction."""
    from diffprune.anatomy import call_options
    from diffprune.conditioning import encode_prompts

    for name, size in (("tiny-sd3", 32), ("tiny-sana", 64)):
        pipe = _pipe(name)
        cond = encode_prompts(pipe, ["a red circle"], "cpu")
        if name == "tiny-sd3":
            assert cond["encoder_hidden_states"].shape[1] == 77 + 256
        seen = {}

        def record(_module, _args, kwargs, seen=seen):
            seen.setdefault("h", kwargs["encoder_hidden_states"])

        handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
        pipe("a red circle", num_inference_steps=1, guidance_scale=1.0, height=size, width=size,
             output_type="latent", **call_options(pipe))
        handle.remove()
        assert torch.equal(seen["h"], cond["encoder_hidden_states"]), name


def test_pixart_alpha_size_conditioning_is_fed_as_its_pipeline_feeds_it():
    from diffusers import PixArtTransformer2DModel

    from diffprune.archs import arch_spec

    spec = {k: v for k, v in arch_spec("tiny-pixart")["transformer"].items() if not k.startswith("_")}
    torch.manual_seed(0)
    model = PixArtTransformer2DModel.from_config({**spec, "use_additional_conditions": True}).eval()
    noisy, t = torch.randn(2, spec["in_channels"], 8, 8), torch.tensor([10, 500])
    cond = {"encoder_hidden_states": torch.randn(2, 5, spec["caption_channels"])}
    with torch.no_grad():
        ours = Denoising("pixart", vae_scale_factor=8).forward(model, noisy, t, cond)
        sizes = {"resolution": torch.tensor([[64.0, 64.0]] * 2), "aspect_ratio": torch.tensor([[1.0]] * 2)}
        stock = model(hidden_states=noisy, timestep=t, added_cond_kwargs=sizes, **cond).sample
        other = Denoising("pixart", vae_scale_factor=16).forward(model, noisy, t, cond)
    assert torch.equal(ours, stock[:, :spec["in_channels"]])
    assert not torch.equal(ours, other)  # the image size is read from the latent grid and the VAE's scale
