import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import diffprune
from diffprune import DiffpruneError
from diffprune._fs import _umask
from diffprune.archs import Family, detect_family


def _saved_without(pipe, folder, unet_key):
    """Save ``pipe``, drop diffprune's manifest (a plain diffusers folder) and delete one tensor from the U-Net's
    weight file, as a hand-edited folder would."""
    out = diffprune.save(pipe, folder)
    (out / "diffprune.json").unlink()
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop(unet_key)
    save_file(state, weights)
    return out, weights


def _assert_same_weights(a, b):
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ma, mb = getattr(a, name, None), getattr(b, name, None)
        if ma is None:
            assert mb is None
            continue
        sa, sb = ma.state_dict(), mb.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), f"{name}.{key}"


@pytest.mark.parametrize("arch", ["tiny-sd", "tiny-sdxl"])
def test_save_load_round_trip_is_bit_identical(arch, tmp_path):
    pipe = diffprune.load(f"random:{arch}", seed=1)
    out = diffprune.save(pipe, tmp_path / "saved")
    again = diffprune.load(out)
    assert type(again) is type(pipe)
    _assert_same_weights(pipe, again)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(again.scheduler.config) == public(pipe.scheduler.config)
    prompt = "a large red circle in the top left"
    assert again.tokenizer(prompt).input_ids == pipe.tokenizer(prompt).input_ids
    manifest = json.loads((out / "diffprune.json").read_text())
    assert manifest["format"] == "diffprune" and manifest["family"] == detect_family(pipe).value
    assert manifest["source"] == f"random:{arch}"


def test_saved_folder_loads_with_stock_diffusers(tiny_sd, tiny_sd_folder):
    from diffusers import StableDiffusionPipeline

    _assert_same_weights(tiny_sd, StableDiffusionPipeline.from_pretrained(tiny_sd_folder))


def test_same_seed_same_weights_and_other_seed_differs():
    a = diffprune.load("random:tiny-sd", seed=7).unet.conv_in.weight
    b = diffprune.load("random:tiny-sd", seed=7).unet.conv_in.weight
    c = diffprune.load("random:tiny-sd", seed=8).unet.conv_in.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_component_and_bare_component_folder(tiny_sd_folder):
    unet = diffprune.load(tiny_sd_folder, component="unet")
    assert type(unet).__name__ == "UNet2DConditionModel"
    bare = diffprune.load(tiny_sd_folder / "unet")
    assert torch.equal(bare.conv_in.weight, unet.conv_in.weight)
    with pytest.raises(DiffpruneError, match="no component 'controlnet'"):
        diffprune.load(tiny_sd_folder, component="controlnet")


def test_dtype_option():
    pipe = diffprune.load("random:tiny-sd", dtype="bf16")
    assert pipe.unet.dtype == torch.bfloat16
    with pytest.raises(DiffpruneError, match="unknown dtype"):
        diffprune.load("random:tiny-sd", dtype="int3")


def test_folder_saved_in_fp16_loads_in_one_precision(tmp_path):
    """A plain diffusers folder saved in fp16: transformers keeps the text encoder in fp16 while diffusers loads
    the U-Net and VAE in fp32; without a dtype the pipeline must still come out in one precision and run."""
    def floating_dtypes(pipe):
        return {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()}

    diffprune.load("random:tiny-sd").to(torch.float16).save_pretrained(tmp_path / "fp16")
    pipe = diffprune.load(tmp_path / "fp16")
    assert floating_dtypes(pipe) == {torch.float32}
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=1, height=64, width=64, output_type="pt").images
    assert torch.isfinite(image).all()
    # an asked-for precision is kept as asked
    assert floating_dtypes(diffprune.load(tmp_path / "fp16", dtype="fp16")) == {torch.float16}


@pytest.mark.parametrize("arch,family", [("sd15", Family.SD1), ("sd21", Family.SD2), ("sdxl", Family.SDXL),
                                         ("tiny-sd", Family.SD1), ("tiny-sdxl", Family.SDXL)])
def test_family_detection(arch, family):
    pipe = diffprune.load(f"random:{arch}", device="meta")
    assert detect_family(pipe) is family and detect_family(pipe.unet) is family


def test_unsupported_models_are_refused(tmp_path):
    from diffusers import UNet2DModel

    with pytest.raises(DiffpruneError, match="unsupported model: UNet2DModel"):
        detect_family(UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4,
                                  down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2))
    folder = tmp_path / "hunyuan"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanDiTPipeline"}))
    with pytest.raises(DiffpruneError, match="unsupported model.*HunyuanDiTPipeline.*FluxPipeline"):
        diffprune.load(folder)


@pytest.mark.parametrize("source,message", [
    ("does/not/exist", "no such file or folder"),
    ("./missing-folder", "no such file or folder"),
    ("random:sd9", "unknown architecture 'sd9'"),
])
def test_bad_sources(source, message):
    with pytest.raises(DiffpruneError, match=message):
        diffprune.load(source)


def test_uncached_hub_id_offline_is_one_clear_error(offline_hub, tmp_path):
    with pytest.raises(DiffpruneError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE") as info:
        diffprune.load("some-org/some-model", cache_dir=str(tmp_path / "empty-cache"))
    assert "\n" not in str(info.value)


def test_pipeline_class_and_unet_family_must_agree():
    import diffusers

    sd = diffprune.load("random:tiny-sd")
    xl = diffprune.load("random:tiny-sdxl")
    mixed = diffusers.StableDiffusionXLPipeline(**{**xl.components, "unet": sd.unet})
    with pytest.raises(DiffpruneError, match="StableDiffusionXLPipeline whose U-Net is built like SD-1.x"):
        detect_family(mixed)


def test_malformed_configs_and_component_weights(tiny_sd, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model_index.json").write_text("[1, 2]")
    with pytest.raises(DiffpruneError, match="does not hold a JSON object"):
        diffprune.load(tmp_path / "bad")
    out, weights = _saved_without(tiny_sd, tmp_path / "m", "conv_out.bias")
    with pytest.raises(DiffpruneError, match="missing.*conv_out.bias"):
        diffprune.load(out / "unet")  # a bare component folder is checked too
    weights.unlink()
    with pytest.raises(DiffpruneError, match="cannot load the UNet2DConditionModel"):
        diffprune.load(out / "unet")


def test_meta_device_only_for_random_sources(tiny_sd_folder):
    with pytest.raises(DiffpruneError, match="meta device is only for random"):
        diffprune.load(tiny_sd_folder, device="meta")
    with pytest.raises(DiffpruneError, match="unknown device"):
        diffprune.load("random:tiny-sd", device="gpu0")


def test_folder_without_configs(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DiffpruneError, match="not a diffusers model folder"):
        diffprune.load(tmp_path)


def test_missing_weights_are_refused_not_randomised(tiny_sd, tmp_path):
    out, _ = _saved_without(tiny_sd, tmp_path / "m", "conv_in.weight")
    with pytest.raises(DiffpruneError, match="1 weights are missing.*conv_in.weight"):
        diffprune.load(out)


def test_single_file_errors(tmp_path, offline_hub):
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(DiffpruneError, match="not a readable safetensors file"):
        diffprune.load(junk)
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(DiffpruneError, match="not a checkpoint diffprune can read"):
        diffprune.load(other)
    text = tmp_path / "weights.txt"
    text.write_text("x")
    with pytest.raises(DiffpruneError, match="not a checkpoint file"):
        diffprune.load(text)


@pytest.mark.parametrize("key,pipeline", [
    ("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "StableDiffusion3Pipeline"),
    ("double_blocks.0.img_attn.qkv.weight", "FluxPipeline"),
    ("model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "FluxPipeline"),
    ("model.diffusion_model.input_blocks.0.0.weight", "StableDiffusionPipeline"),
])
def test_single_files_of_dits_go_to_their_pipeline(tmp_path, offline_hub, monkeypatch, key, pipeline):
    import diffusers

    calls = []
    monkeypatch.setattr(getattr(diffusers, pipeline), "from_single_file",
                        classmethod(lambda cls, path, **kw: calls.append(cls.__name__) or (_ for _ in ()).throw(
                            OSError("no config offline"))))
    ckpt = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(2, 2)}, ckpt)
    with pytest.raises(DiffpruneError, match="cannot load single-file checkpoint.*config="):
        diffprune.load(ckpt)
    assert calls == [pipeline]


def test_save_refuses_to_overwrite_and_keeps_existing_content(tiny_sd, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DiffpruneError, match="exists and is not empty"):
        diffprune.save(tiny_sd, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind
    # --overwrite replaces earlier diffprune output only, never a folder of other content
    with pytest.raises(DiffpruneError, match="not an earlier diffprune output"):
        diffprune.save(tiny_sd, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    saved = diffprune.save(tiny_sd, tmp_path / "saved")
    (saved / "notes.txt").write_text("added by the user after saving")
    with pytest.raises(DiffpruneError, match="holds files diffprune did not write there"):
        diffprune.save(tiny_sd, saved, overwrite=True)  # the user's file would be lost
    (saved / "notes.txt").unlink()
    diffprune.save(tiny_sd, saved, overwrite=True)
    assert (saved / "model_index.json").exists()
    assert (saved.stat().st_mode & 0o777) == 0o777 & ~_umask()


def test_save_never_writes_into_the_input_folder(tiny_sd_folder):
    pipe = diffprune.load(tiny_sd_folder)
    before = sorted(p.relative_to(tiny_sd_folder) for p in tiny_sd_folder.rglob("*"))
    with pytest.raises(DiffpruneError, match="overlaps the input"):
        diffprune.save(pipe, tiny_sd_folder / "pruned", overwrite=True)
    with pytest.raises(DiffpruneError, match="overlaps the input"):
        diffprune.save(pipe, tiny_sd_folder, overwrite=True)
    assert sorted(p.relative_to(tiny_sd_folder) for p in tiny_sd_folder.rglob("*")) == before


def test_meta_pipelines_cannot_be_saved(tmp_path):
    with pytest.raises(DiffpruneError, match="meta device"):
        diffprune.save(diffprune.load("random:tiny-sd", device="meta"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_build_unet_alone_matches_the_pipeline_unet():
    from diffprune.archs import build_unet

    a = build_unet("tiny-sd", seed=3).state_dict()
    b = diffprune.load("random:tiny-sd", seed=3).unet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _sana_original_layout(transformer) -> dict:
    """The tiny Sana transformer's weights in the layout of Sana's own training repository (the inverse of the
    key mapping diffusers' single-file loader applies), as a released .pth/.safetensors holds them."""
    sd = {k: v.clone() for k, v in transformer.state_dict().items()}
    out = {"pos_embed": torch.zeros(1, 1, 1), "y_embedder.y_embedding": torch.zeros(1, 1)}  # read, then dropped
    rename = {"patch_embed.proj": "x_embedder.proj", "time_embed.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
              "time_embed.emb.timestep_embedder.linear_2": "t_embedder.mlp.2", "time_embed.linear": "t_block.1",
              "caption_projection.linear_1": "y_embedder.y_proj.fc1", "caption_projection.linear_2":
              "y_embedder.y_proj.fc2", "caption_norm": "attention_y_norm", "proj_out": "final_layer.linear"}
    for new, old in rename.items():
        for kind in ("weight", "bias"):
            if f"{new}.{kind}" in sd:
                out[f"{old}.{kind}"] = sd.pop(f"{new}.{kind}")
    out["final_layer.scale_shift_table"] = sd.pop("scale_shift_table")
    for i in range(len(transformer.transformer_blocks)):
        b, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        out[o + "scale_shift_table"] = sd.pop(b + "scale_shift_table")
        out[o + "attn.qkv.weight"] = torch.cat([sd.pop(b + f"attn1.to_{x}.weight") for x in "qkv"])
        for kind in ("weight", "bias"):
            out[o + f"attn.proj.{kind}"] = sd.pop(b + f"attn1.to_out.0.{kind}")
            out[o + f"cross_attn.q_linear.{kind}"] = sd.pop(b + f"attn2.to_q.{kind}")
            out[o + f"cross_attn.kv_linear.{kind}"] = torch.cat([sd.pop(b + f"attn2.to_{x}.{kind}") for x in "kv"])
            out[o + f"cross_attn.proj.{kind}"] = sd.pop(b + f"attn2.to_out.0.{kind}")
            out[o + f"mlp.inverted_conv.conv.{kind}"] = sd.pop(b + f"ff.conv_inverted.{kind}")
            out[o + f"mlp.depth_conv.conv.{kind}"] = sd.pop(b + f"ff.conv_depth.{kind}")
        out[o + "mlp.point_conv.conv.weight"] = sd.pop(b + "ff.conv_point.weight")
    assert not sd, f"unmapped: {sorted(sd)}"
    return out


def test_a_sana_transformer_file_loads_into_the_pipeline_of_its_config(tmp_path, offline_hub):
    """diffusers converts a Sana transformer (not a whole pipeline) from one file; the rest comes from --config."""
    from diffprune.cli import main

    reference = diffprune.load("random:tiny-sana", seed=5)
    config = tmp_path / "sana"
    diffprune.save(diffprune.load("random:tiny-sana", seed=6), config)  # same architecture, other weights
    ckpt = tmp_path / "sana_transformer.safetensors"
    save_file({k: v.contiguous() for k, v in _sana_original_layout(reference.transformer).items()}, ckpt)
    pipe = diffprune.load(ckpt, config=str(config))
    assert type(pipe).__name__ == "SanaPipeline" and pipe._diffprune == {"source": str(ckpt), "history": []}
    a, b = reference.transformer.state_dict(), pipe.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert pipe.transformer.dtype == torch.float32
    with pytest.raises(DiffpruneError, match="holds a Sana transformer only; pass config="):
        diffprune.load(ckpt)
    assert main(["info", str(ckpt), "--config", str(config)]) == 0


def test_a_sana_transformer_file_never_loads_the_transformer_of_its_config(tmp_path, offline_hub, monkeypatch):
    """The config (a folder or a cached Hub id) gives the transformer's config and the other components; its own
    transformer weights are neither read nor loaded, so a config whose transformer is a config alone serves."""
    import huggingface_hub
    from diffusers import SanaTransformer2DModel

    reference = diffprune.load("random:tiny-sana", seed=5)
    ckpt = tmp_path / "sana_transformer.safetensors"
    save_file({k: v.contiguous() for k, v in _sana_original_layout(reference.transformer).items()}, ckpt)
    other = diffprune.load("random:tiny-sana", seed=6)
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub_repo = tmp_path / "cache" / "models--diffprune-test--sana"
    folders = {"folder": tmp_path / "sana", "hub": hub_repo / "snapshots" / commit}
    for folder in folders.values():
        other.save_pretrained(folder)
        for weights in (folder / "transformer").glob("*.safetensors"):
            weights.unlink()  # only transformer/config.json is left
    (hub_repo / "refs").mkdir()
    (hub_repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))

    def refused(*args, **kwargs):
        raise AssertionError("the config's own transformer was loaded")

    monkeypatch.setattr(SanaTransformer2DModel, "from_pretrained", refused)
    for config in (str(folders["folder"]), str(folders["folder"] / "model_index.json"), "diffprune-test/sana"):
        pipe = diffprune.load(ckpt, config=config)
        a, b = reference.transformer.state_dict(), pipe.transformer.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(pipe.vae.decoder.conv_out.weight, other.vae.decoder.conv_out.weight)
    pixart = tmp_path / "pixart"
    diffprune.load("random:tiny-pixart").save_pretrained(pixart)
    with pytest.raises(DiffpruneError, match="is a Sana transformer, but config .* is a PixArtSigmaPipeline"):
        diffprune.load(ckpt, config=str(pixart))
    with pytest.raises(DiffpruneError, match="neither a diffusers pipeline folder nor a Hub id"):
        diffprune.load(ckpt, config=str(tmp_path / "no" / "such" / "folder"))


@pytest.mark.parametrize("arch", ["tiny-pixart", "tiny-flux"])
def test_a_cached_hub_id_of_a_dit_loads_offline(arch, tmp_path, offline_hub):
    """A Hub id found in the Hugging Face cache (laid out as huggingface_hub lays it out) loads offline, checked."""
    reference = diffprune.load(f"random:{arch}", seed=2)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / f"models--diffprune-test--{arch}"
    reference.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    pipe = diffprune.load(f"diffprune-test/{arch}", cache_dir=str(tmp_path / "cache"))
    assert type(pipe) is type(reference)
    a, b = reference.transformer.state_dict(), pipe.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (repo / "snapshots" / commit / "transformer" / "attention.py").write_text("import os\n")
    with pytest.raises(DiffpruneError, match="attention.py"):  # code in the cached snapshot is refused
        diffprune.load(f"diffprune-test/{arch}", cache_dir=str(tmp_path / "cache"))
