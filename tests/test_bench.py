"""diffprune bench: the Pareto front, interleaved timing, the baseline and recipes side by side, the report,
the CLI's checks."""

import itertools
import json

import pytest
import torch

import diffprune
from diffprune.bench import BenchConfig, pareto_front, run_bench, table_rows, write_bench_report
from diffprune.cli import main
from diffprune.measure import interleaved_latency
from diffprune.recipe import Recipe, load_recipe


def test_pareto_front_keeps_exactly_the_undominated_points():
    costs = [10, 8, 8, 5, 5, 3, 12]
    quality = [0.9, 0.9, 0.7, 0.6, 0.8, 0.2, 0.95]
    # (8, .9) dominates (10, .9) and (8, .7); (5, .8) dominates (5, .6); (3, .2) and (12, .95) are extremes
    assert pareto_front(costs, quality) == [5, 4, 1, 6]
    assert pareto_front([1, 2], [None, 0.5]) == [1]
    assert pareto_front([1, 1], [0.5, 0.5]) == [0, 1]  # equal points dominate neither


def test_interleaved_latency_rotates_the_order_each_round():
    calls = []
    clock = itertools.count()

    def make(label):
        return lambda: calls.append(label)

    stats = interleaved_latency({"a": make("a"), "b": make("b"), "c": make("c")}, repeats=3, warmup=0,
                                timer=lambda: float(next(clock)))
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: s.repeats for k, s in stats.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(s.median_s == 1.0 for s in stats.values())  # the fake clock ticks once per timed call


SMALL = BenchConfig(prompts=3, steps=3, latency_repeats=1, latency_warmup=0, grid_prompts=2, progress=False)


def test_bench_measures_each_recipe_against_the_baseline(shapes, tmp_path):
    before = {k: v.clone() for k, v in shapes.unet.state_dict().items()}
    recipes = [load_recipe("atedm"), load_recipe("sd2-study")]
    result = run_bench(shapes, recipes, SMALL, name="shapes")
    assert all(torch.equal(before[k], v) for k, v in shapes.unet.state_dict().items())  # source untouched
    base, atedm, sd2 = result.variants
    assert [v.name for v in result.variants] == ["baseline", "atedm", "sd2-study"]
    assert result.testbed and result.quality_key == "accuracy_all"
    assert base.latency_ratio == 1.0 and atedm.latency_ratio > 0
    # token pruning cuts FLOPs and nothing stored; weight pruning cuts non-zeros and the file, not FLOPs
    assert atedm.gflops_per_image < base.gflops_per_image and atedm.nonzero_params == base.nonzero_params
    assert sd2.gflops_per_image == pytest.approx(base.gflops_per_image)
    assert sd2.nonzero_params < 0.9 * base.nonzero_params and sd2.disk_bytes < base.disk_bytes
    # same shapes, same run: the baseline, measured first, is not charged with one-time allocations
    assert base.generation_bytes <= 2 * sd2.generation_bytes + 8 * 2**20
    # fidelity and reading agreement are against the baseline's images of the same prompts and seeds
    assert "psnr" not in base.quality and {"psnr", "ssim", "agreement_all"} <= set(sd2.quality)
    rows = table_rows(result)
    assert rows[1]["FLOPs vs base"] == pytest.approx(atedm.gflops_per_image / base.gflops_per_image)
    folder = write_bench_report(result, tmp_path / "report")
    assert {"report.md", "report.json", "pareto.png", "variants.png"} <= {p.name for p in folder.iterdir()}
    data = json.loads((folder / "report.json").read_text())
    assert [r["variant"] for r in data["table"]] == ["baseline", "atedm", "sd2-study"]


def test_bench_is_deterministic(shapes):
    recipe = Recipe.from_dict({"name": "t", "tokens": "random:ratio=0.5"})
    a = run_bench(shapes, [recipe], SMALL)
    b = run_bench(shapes, [recipe], SMALL)
    assert all(torch.equal(x.images, y.images) for x, y in zip(a.variants, b.variants))
    assert a.variants[1].quality == b.variants[1].quality


@pytest.mark.parametrize("argv, message", [
    (["bench", "shapes", "--out", "{tmp}/o"], "give a SOURCE and --recipes"),
    (["bench", "shapes", "--recipes", "nope", "--out", "{tmp}/o"], "no recipe file nope"),
    (["bench", "shapes", "--recipes", "atedm", "atedm", "--out", "{tmp}/o"], "used twice"),
    (["bench", "shapes", "--claims", "--out", "{tmp}/o"], "--claims takes no SOURCE"),
    (["bench", "shapes", "--recipes", "atedm", "--prompts", "1", "--out", "{tmp}/o"], "at least 2 prompts"),
])
def test_cli_bench_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_cli_bench_refuses_a_foreign_output_folder_before_running(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    code = main(["bench", "shapes", "--recipes", "atedm", "--out", str(out)])
    assert code == 2 and (out / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_claims_run_end_to_end_on_small_settings(tmp_path):
    from diffprune.bench.claims import ClaimsConfig, run_claims, write_claims_report

    config = ClaimsConfig(prompts=2, steps=2, latency_repeats=1, flops_arch="tiny-sdxl", flops_resolution=256,
                          speed_arch="tiny-sdxl", speed_resolution=128, additivity_sets=3, calibration_prompts=2,
                          modulation_arch="tiny-flux", depth_arch="tiny-pixart", progress=False)
    result = run_claims(config)
    papers = [c.paper for c in result.claims]
    assert papers.count("SD-2 pruning study") == 3 and papers.count("LAPTOP-Diff") == 2 and papers.count("AT-EDM") == 3
    assert all(papers.count(p) == 1 for p in ("FLUX.1 / Chroma", "TinyFusion", "OBS-Diff"))
    assert all(c.verdict in ("yes", "no", "n/a") for c in result.claims)
    m = result.measurements
    assert m["atedm_flops"]["pruned_tflops"] < m["atedm_flops"]["base_tflops"]
    assert set(m["layers_50"]) == set(diffprune.layers.CRITERIA)
    # the output loss of a single unit is its own summed score: additivity is exact on one-unit sets and high here
    assert m["additivity_pearson"]["output-loss"] > 0.5
    folder = write_claims_report(result, tmp_path / "claims")
    table = json.loads((folder / "report.json").read_text())["claims"]
    assert len(table) == 11 and {"claim", "source's number", "measured here", "holds?"} <= set(table[0])


def test_bench_on_a_transformer_reports_where_parameters_and_flops_sit(tmp_path):
    from diffprune.measure import denoiser_inputs, parameter_groups

    pipe = diffprune.load("random:tiny-pixart", seed=0)
    config = BenchConfig(prompts=2, steps=2, latency_repeats=1, latency_warmup=0, progress=False)
    result = run_bench(pipe, [load_recipe("dit-half")], config, name="random:tiny-pixart")
    base, half = result.variants
    assert half.params < base.params and half.nonzero_params < half.params
    rows = [r for r in json.loads((write_bench_report(result, tmp_path / "r") / "report.json").read_text())["roles"]
            if r["role"] == "modulation"]
    assert [r["variant"] for r in rows] == ["baseline", "dit-half"]
    size = diffprune.archs.arch_spec("tiny-pixart")["resolution"]
    by_role = parameter_groups(pipe.transformer, denoiser_inputs(pipe.transformer, resolution=size))
    assert rows[0]["params (M)"] * 1e6 == pytest.approx(by_role["modulation"].params)
    assert rows[1]["params (M)"] < rows[0]["params (M)"]  # removed blocks took their modulation layers along


def test_the_collapse_order_claim_needs_a_strict_order_on_the_grid():
    from diffprune.bench.claims import collapses_first

    assert collapses_first(0.5, 0.65) is True and collapses_first(0.65, 0.5) is False
    # a tie on the grid, or a component that never collapses, cannot say which went first
    assert collapses_first(0.95, 0.95) is None and collapses_first(None, 0.5) is None


def test_bench_runs_public_peers_beside_recipes_and_stacks_them(shapes, monkeypatch):
    pytest.importorskip("DeepCache")
    peers = ["deepcache:interval=2", "atedm:ratio=0.63+deepcache:interval=2"]
    result = run_bench(shapes, [load_recipe("atedm")], SMALL, peers=peers)
    base, atedm, cache, both = result.variants
    assert [v.name for v in result.variants] == ["baseline", "atedm", *peers]
    # DeepCache skips most of the U-Net on every other step; token pruning on top cuts the full steps further
    assert cache.gflops_per_image < 0.8 * base.gflops_per_image
    assert both.gflops_per_image < cache.gflops_per_image
    assert cache.nonzero_params == base.nonzero_params and cache.disk_bytes == base.disk_bytes
    assert {"psnr", "agreement_all"} <= set(both.quality) and both.steps == [f"run time: {peers[1]}"]
    from diffprune.bench import peers as peer_module

    monkeypatch.setattr(peer_module, "available", lambda name: False)
    with pytest.raises(diffprune.DiffpruneError, match="pip install DeepCache"):
        run_bench(shapes, [], SMALL, peers=["deepcache:interval=3"])
