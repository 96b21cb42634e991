"""Weight pruning of diffusion transformers and their T5 / CLIP / Gemma text encoders, calibrated through the real
pipeline, stored as bitmasks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import diffprune
from diffprune import weights
from diffprune.weights.targets import find_targets, groups_in_order

def semistructured_available() -> bool:
    from diffprune.weights import semistructured

    return semistructured.available()[0]


CALIB = weights.CalibrationConfig(num_prompts=2, steps=2, batch_size=2, groups=2)


@pytest.fixture(scope="module")
def flux():
    pipe = diffprune.load("random:tiny-flux", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _zeros(module: nn.Module) -> float:
    ts = [t.weight for t in find_targets(module)]
    return 1 - sum(int(torch.count_nonzero(w)) for w in ts) / sum(w.numel() for w in ts)


def test_targets_cover_every_linear_in_forward_order():
    pixart = diffprune.load("random:tiny-pixart", device="meta")
    targets = find_targets(pixart.transformer)
    linears = [n for n, m in pixart.transformer.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(t.name for t in targets) == sorted(linears)
    order = [g[0].group for g in groups_in_order(targets)]
    # PixArt registers its caption and timestep embedders after its output layers; they run first
    assert order.index("caption_projection") < order.index("transformer_blocks.0") < order.index("proj_out")
    assert order.index("adaln_single") < order.index("transformer_blocks.0")
    t5 = find_targets(pixart.text_encoder)
    assert t5 and all(t.group.startswith("encoder.block.") for t in t5)
    assert {t.name.rsplit(".", 1)[1] for t in t5} == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
    sana = diffprune.load("random:tiny-sana", device="meta")
    assert all(t.group.startswith("layers.") for t in find_targets(sana.text_encoder))
    convs = [t for t in find_targets(sana.transformer, include_conv=True) if isinstance(t.module, nn.Conv2d)]
    assert convs and all(".ff." in t.name for t in convs if t.group.startswith("transformer_blocks"))


def test_calibrated_methods_refuse_sanas_depthwise_convolution_and_magnitude_prunes_it():
    sana = diffprune.load("random:tiny-sana", seed=0)
    before = {k: v.clone() for k, v in sana.transformer.state_dict().items()}
    for method in ("wanda", "sparsegpt"):
        with pytest.raises(diffprune.DiffpruneError, match="depthwise"):
            weights.prune(sana, {"transformer": weights.make_config(method, 0.5, include_conv=True)})
    assert all(torch.equal(before[k], v) for k, v in sana.transformer.state_dict().items())  # checked first
    weights.prune(sana, {"transformer": weights.MagnitudeConfig(sparsity=0.5, include_conv=True)})
    depthwise = next(m for m in sana.transformer.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    assert float((depthwise.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("method,config", [
    ("magnitude", weights.MagnitudeConfig(sparsity=0.5)),
    ("wanda", weights.WandaConfig(sparsity=0.5)),
    ("sparsegpt", weights.SparseGPTConfig(sparsity=0.5)),
    ("wanda 2:4", weights.WandaConfig(sparsity=0.5, pattern="2:4")),
])
def test_every_method_prunes_a_flux_transformer_and_its_t5(flux, method, config):
    pipe = copy.deepcopy(flux)
    embedding = pipe.text_encoder_2.shared.weight.clone()
    result = weights.prune(pipe, {"text_encoder_2": config, "transformer": config}, CALIB)
    for name in ("text_encoder_2", "transformer"):
        assert result.components[name].sparsity == pytest.approx(0.5, abs=1e-3)
        assert _zeros(getattr(pipe, name)) == pytest.approx(0.5, abs=1e-3)
    assert torch.equal(pipe.text_encoder_2.shared.weight, embedding)  # embeddings stay dense
    if config.nm is not None:
        for t in find_targets(pipe.transformer):
            groups = t.weight.reshape(t.weight.shape[0], -1, 4)
            assert int((groups != 0).sum(-1).max()) <= 2
    image = pipe("a red circle", num_inference_steps=2, height=32, width=32, max_sequence_length=16,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert torch.isfinite(torch.as_tensor(image)).all()


def test_calibration_weights_each_transformer_call_by_its_step(flux):
    """Wanda's column norms and SparseGPT's Hessian are step-weighted means over every transformer call of the
    sampling run (OBS-Diff's timestep-weighted calibration)."""
    from diffprune.weights.calibrate import Collector, run_sampling

    pipe = copy.deepcopy(flux)
    target = next(t for t in find_targets(pipe.transformer) if t.name == "transformer_blocks.0.attn.to_q")
    seen = []
    handle = target.module.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach().clone()))
    config = weights.CalibrationConfig(num_prompts=1, steps=3, batch_size=1)
    collector = Collector([target], hessian=True)
    with collector:
        run_sampling(pipe, config, collector)
    handle.remove()
    assert len(seen) == 3  # one call per step (FLUX.1-dev distils guidance: no doubled batch)
    w = config.step_weights()
    assert w[0] > w[1] > w[2]  # the noisiest step weighs most
    xs = [x.reshape(-1, x.shape[-1]).double() for x in seen]
    rows = sum(wk * x.shape[0] for wk, x in zip(w, xs))
    colsq = sum(wk * x.pow(2).sum(0) for wk, x in zip(w, xs))
    stats = collector.stats[target.name]
    assert torch.allclose(stats.column_norms(), (colsq / rows).sqrt().float(), rtol=1e-5)
    gram = sum(wk * x.T @ x for wk, x in zip(w, xs))
    assert torch.allclose(stats.hessian().double(), 2 * gram / rows, rtol=1e-4, atol=1e-6)
    uniform = sum(x.T @ x for x in xs) * 2 / sum(x.shape[0] for x in xs)
    assert not torch.allclose(stats.hessian().double(), uniform, rtol=1e-3)  # the weighting shows


def test_bitmask_storage_shrinks_a_pruned_dit_and_reloads_it_exactly(flux, tmp_path):
    pipe = copy.deepcopy(flux)
    weights.prune(pipe, {"transformer": weights.MagnitudeConfig(sparsity=0.7),
                         "text_encoder_2": weights.MagnitudeConfig(sparsity=0.7)})
    dense = diffprune.save(pipe, tmp_path / "dense", weights_format="dense")
    sparse = diffprune.save(pipe, tmp_path / "sparse", weights_format="bitmask")
    from diffprune.measure import disk_usage

    d, s = disk_usage(dense).components, disk_usage(sparse).components
    # 70 % zeros at fp32: 0.3 x 4 + 1/8 bytes per pruned weight instead of 4; T5's dense embedding table stays
    assert s["transformer"] < 0.5 * d["transformer"] and s["text_encoder_2"] < 0.85 * d["text_encoder_2"]
    back = diffprune.load(sparse)
    for name in ("transformer", "text_encoder_2"):
        a, b = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_bare_transformer_takes_magnitude_and_refuses_calibrated_methods(flux):
    model = copy.deepcopy(flux.transformer)
    result = weights.prune(model, {"transformer": weights.MagnitudeConfig(sparsity=0.3)})
    assert result.components["transformer"].sparsity == pytest.approx(0.3, abs=1e-3)
    with pytest.raises(diffprune.DiffpruneError, match="needs calibration through a full pipeline"):
        weights.prune(model, {"transformer": weights.WandaConfig(sparsity=0.3)})


def test_cli_prunes_a_dit_pipeline(tmp_path, capsys):
    from diffprune.cli import main

    out = tmp_path / "pruned"
    assert main(["prune-weights", "random:tiny-sd3", "--transformer-sparsity", "0.5", "--text-encoder-3-sparsity",
                 "0.5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "transformer" in text and "text_encoder_3" in text
    back = diffprune.load(out)
    assert _zeros(back.transformer) == pytest.approx(0.5, abs=1e-3)


def test_two_four_detection():
    from diffprune.weights import semistructured

    w = torch.tensor([[1.0, 0, 2, 0, 0, 3, 0, 4], [0, 0, 0, 1, 5, 6, 0, 0]])
    assert semistructured.is_two_four(w) and not semistructured.is_two_four(torch.ones(2, 8))


@pytest.mark.skipif(semistructured_available(), reason="this machine has the kernels; the GPU test below runs")
def test_semi_structured_kernels_say_clearly_when_they_cannot_run():
    from diffprune.weights import semistructured

    ok, why = semistructured.available()
    assert not ok and ("GPU" in why or "capability" in why)
    model = nn.Sequential(nn.Linear(64, 64))
    with pytest.raises(diffprune.DiffpruneError, match="semi-structured"):
        semistructured.apply(model)
    assert semistructured.remove(model) == 0


@pytest.mark.skipif(not semistructured_available(), reason="needs a CUDA GPU of compute capability 8.0+")
def test_semi_structured_weights_give_the_dense_result_and_go_back_exactly():
    from diffprune.weights import semistructured

    model = nn.Sequential(nn.Linear(128, 128)).to("cuda", torch.float16)
    with torch.no_grad():
        w = model[0].weight
        keep = w.abs().reshape(128, -1, 4).topk(2, dim=-1).indices
        mask = torch.zeros_like(w).reshape(128, -1, 4).scatter_(-1, keep, 1).reshape(128, 128)
        w.mul_(mask)
    dense = model[0].weight.detach().clone()
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    expected = model(x)
    assert semistructured.apply(model) == ["0"] and semistructured.apply(model) == ["0"]  # idempotent
    assert torch.allclose(model(x), expected, atol=1e-2, rtol=1e-2)
    with pytest.raises(diffprune.DiffpruneError, match="semi-structured"):
        diffprune.measure.count_params(model)
    assert semistructured.remove(model) == 1 and torch.equal(model[0].weight, dense)


def test_streamed_magnitude_pruning_matches_the_in_memory_result(tmp_path):
    from diffprune.weights.stream import stream_prune

    model = diffprune.load("random:tiny-flux", seed=5).transformer
    model.save_pretrained(tmp_path / "dense", max_shard_size="40KB")  # several shards, read one tensor at a time
    assert len(list((tmp_path / "dense").glob("*.safetensors"))) > 1
    config = weights.MagnitudeConfig(sparsity=0.6)
    result = stream_prune(str(tmp_path / "dense"), tmp_path / "streamed", config, shard_bytes=50_000)
    assert result.shards > 1 and result.sparsity == pytest.approx(0.6, abs=1e-3)
    expected = copy.deepcopy(model)
    weights.prune(expected, {"transformer": config})
    from diffusers import FluxTransformer2DModel

    back, info = FluxTransformer2DModel.from_pretrained(tmp_path / "streamed", output_loading_info=True)
    assert not any(info.values())
    a, b = expected.state_dict(), back.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(diffprune.DiffpruneError, match="exists"):
        stream_prune(str(tmp_path / "dense"), tmp_path / "streamed", config)
    with pytest.raises(diffprune.DiffpruneError, match="scope 'layer'"):
        stream_prune(str(tmp_path / "dense"), tmp_path / "g", weights.MagnitudeConfig(sparsity=0.5, scope="global"))


def test_streamed_random_weights_are_seeded_and_load(tmp_path):
    from diffprune.weights.stream import stream_prune

    config = weights.MagnitudeConfig(sparsity=0.5, pattern="2:4")
    one = stream_prune("random:tiny-flux", tmp_path / "a", config, dtype="bf16", seed=1)
    two = stream_prune("random:tiny-flux", tmp_path / "b", config, dtype="bf16", seed=1)
    assert one.sparsity == two.sparsity == pytest.approx(0.5, abs=1e-3)
    files = sorted(p.name for p in (tmp_path / "a").glob("*.safetensors"))
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a" / files[0]), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    model = diffprune.load(tmp_path / "a", dtype="bf16")
    assert all(torch.isfinite(p.float()).all() for p in model.parameters())
    assert _zeros(model) == pytest.approx(0.5, abs=1e-3)


def test_streamed_bitmask_shards_shrink_and_load_bit_exact(tmp_path):
    from diffprune.weights.storage import SPARSE_INDEX
    from diffprune.weights.stream import stream_prune

    model = diffprune.load("random:tiny-flux", seed=5).transformer
    model.save_pretrained(tmp_path / "dense")
    config = weights.MagnitudeConfig(sparsity=0.6)
    dense = stream_prune(str(tmp_path / "dense"), tmp_path / "plain", config, shard_bytes=50_000)
    sparse = stream_prune(str(tmp_path / "dense"), tmp_path / "sparse", config, shard_bytes=50_000,
                          storage="bitmask")
    assert sparse.shards == dense.shards > 1 and sparse.zeros == dense.zeros
    shards = sorted((tmp_path / "sparse").glob("diffprune_sparse-*.safetensors"))
    assert len(shards) == sparse.shards and (tmp_path / "sparse" / SPARSE_INDEX).is_file()
    from diffusers import FluxTransformer2DModel

    reference = FluxTransformer2DModel.from_pretrained(tmp_path / "plain").state_dict()
    # a tensor costs its non-zeros (fp32) plus one bit per entry when that is less than dense, else dense
    payload = sum(min(4 * t.numel(), 4 * int(t.count_nonzero()) + (t.numel() + 7) // 8) if t.numel() >= 64
                  else 4 * t.numel() for t in reference.values())
    size = sum(f.stat().st_size for f in shards)
    headers = size - payload
    assert 0 < headers < 400 * len(reference)  # names, offsets and the sparse table: a few hundred bytes each
    assert size < 0.6 * sum(f.stat().st_size for f in (tmp_path / "plain").glob("*.safetensors"))
    back = diffprune.load(tmp_path / "sparse").state_dict()
    assert set(back) == set(reference) and all(torch.equal(back[k], reference[k]) for k in reference)
    again = stream_prune(str(tmp_path / "dense"), tmp_path / "again", config, shard_bytes=50_000,
                         storage="bitmask")
    assert again.shards == sparse.shards
    assert all(f.read_bytes() == (tmp_path / "again" / f.name).read_bytes()
               for f in [*shards, tmp_path / "sparse" / SPARSE_INDEX])
    with pytest.raises(diffprune.DiffpruneError, match="unknown storage"):
        stream_prune(str(tmp_path / "dense"), tmp_path / "x", config, storage="csr")


def test_a_damaged_sparse_index_is_refused_in_one_line(tmp_path):
    import json

    from diffprune.weights.storage import SPARSE_INDEX
    from diffprune.weights.stream import stream_prune

    out = tmp_path / "sparse"
    stream_prune("random:tiny-flux", out, weights.MagnitudeConfig(sparsity=0.5), shard_bytes=50_000,
                 storage="bitmask")
    index = json.loads((out / SPARSE_INDEX).read_text())
    first = min(index["weight_map"].values())
    (out / first).rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(diffprune.DiffpruneError, match=f"lists {first}, which is not in the folder"):
        diffprune.load(out)
    (tmp_path / "elsewhere.safetensors").rename(out / first)
    diffprune.load(out)  # whole again
    damaged = {
        "../elsewhere.safetensors": "shard files in the folder",
        "": "shard files in the folder",
        "config.json": "shard files in the folder",
        "a" * 300 + ".safetensors": "which is not in the folder",  # longer than a file name may be
    }
    name = next(iter(index["weight_map"]))
    for bad, message in damaged.items():
        (out / SPARSE_INDEX).write_text(json.dumps({**index, "weight_map": {**index["weight_map"], name: bad}}))
        with pytest.raises(diffprune.DiffpruneError, match=message):
            diffprune.load(out)
    # every tensor said to be in the first shard: the index no longer says what the shards hold
    (out / SPARSE_INDEX).write_text(json.dumps({**index, "weight_map": {
        **{k: first for k in index["weight_map"]}, "extra": sorted(set(index["weight_map"].values()))[-1]}}))
    with pytest.raises(diffprune.DiffpruneError, match="does not list what"):
        diffprune.load(out)
    # an index that leaves a shard out leaves its tensors unloaded
    (out / SPARSE_INDEX).write_text(json.dumps(
        {**index, "weight_map": {k: v for k, v in index["weight_map"].items() if v != first}}))
    with pytest.raises(diffprune.DiffpruneError, match="some weights are missing"):
        diffprune.load(out)
    (out / SPARSE_INDEX).write_text(json.dumps(index))
    (out / "diffprune_sparse.safetensors").write_bytes((out / first).read_bytes())
    with pytest.raises(diffprune.DiffpruneError, match="holds both"):
        diffprune.load(out)
    with pytest.raises(diffprune.DiffpruneError, match="sparse format; stream the dense folder"):
        stream_prune(str(out), tmp_path / "again", weights.MagnitudeConfig(sparsity=0.5))
