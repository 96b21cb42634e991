"""Sparse checkpoints: bit packing, bit-exact round trips, files that shrink, clear errors on damage."""

import json

import pytest
import torch

import diffprune
from diffprune.errors import DiffpruneError
from diffprune.weights import MagnitudeConfig, prune
from diffprune.weights.storage import SPARSE_FILE, decode, encode, pack_bits, unpack_bits


def test_bit_packing_by_hand():
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.tolist() == [0b10000001, 0b00000011]  # least significant bit first
    assert torch.equal(unpack_bits(packed, 10), mask)


def test_encode_keeps_negative_zero_and_stores_only_what_shrinks(tmp_path):
    from safetensors.torch import save_file

    w = torch.randn(64, 64).half()
    w[w.abs() < 0.7] = 0
    w[0, 0] = -0.0
    dense = torch.randn(64, 64).half()
    tensors, meta = encode({"w": w, "dense": dense, "small": torch.zeros(3)})
    assert set(json.loads(meta["sparse"])) == {"w"} and "dense" in tensors and "small" in tensors
    save_file(tensors, str(tmp_path / "f.safetensors"), metadata=meta)
    back = decode(tmp_path / "f.safetensors")
    for name, t in {"w": w, "dense": dense}.items():
        assert torch.equal(back[name].view(torch.int16), t.view(torch.int16))  # bit for bit, -0.0 included


def _pruned_fp16(pattern="unstructured", sparsity=0.5):
    pipe = diffprune.load("random:tiny-sd", dtype="fp16")
    prune(pipe, {"unet": MagnitudeConfig(sparsity, pattern=pattern, include_conv=True),
                 "text_encoder": MagnitudeConfig(sparsity, pattern=pattern)})
    return pipe


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_round_trip_is_bit_identical_and_files_shrink(tmp_path, pattern):
    pipe = _pruned_fp16(pattern)
    dense_dir = diffprune.save(pipe, tmp_path / "dense")
    sparse_dir = diffprune.save(pipe, tmp_path / "sparse", weights_format="bitmask")
    assert (sparse_dir / "unet" / SPARSE_FILE).is_file()
    assert not list((sparse_dir / "unet").glob("diffusion_pytorch_model*"))
    back = diffprune.load(sparse_dir, dtype="fp16")
    for name in ("unet", "text_encoder", "vae"):
        a, b = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a), name
    plain, dense = diffprune.load(sparse_dir), diffprune.load(dense_dir)  # no dtype: as a dense folder loads
    for name in ("unet", "text_encoder"):
        a, b = getattr(plain, name).state_dict(), getattr(dense, name).state_dict()
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a), name
    dense_size = (dense_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    sparse_size = (sparse_dir / "unet" / SPARSE_FILE).stat().st_size
    assert sparse_size <= 0.6 * dense_size, (sparse_size, dense_size)
    if pattern == "2:4":
        from safetensors import safe_open

        with safe_open(str(sparse_dir / "unet" / SPARSE_FILE), "pt") as f:
            table = json.loads(f.metadata()["sparse"])
            name = next(k for k, v in table.items() if v["layout"] == "2:4")
            values = f.get_tensor(f"{name}.__values__")
        assert values.shape[1] * 2 == torch.tensor(table[name]["shape"][1:]).prod()


def test_a_sparse_component_folder_loads_alone(tmp_path):
    pipe = _pruned_fp16()
    folder = diffprune.save(pipe, tmp_path / "p", weights_format="bitmask")
    unet = diffprune.load(folder / "unet", dtype="fp16")
    a, b = pipe.unet.state_dict(), unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_history_is_kept(tmp_path):
    pipe = _pruned_fp16()
    folder = diffprune.save(pipe, tmp_path / "p", weights_format="bitmask")
    steps = diffprune.load(folder)._diffprune["history"]
    assert [s["component"] for s in steps if s["step"] == "prune-weights"] == ["text_encoder", "unet"]


def test_damaged_sparse_files_give_one_clear_error(tmp_path):
    pipe = _pruned_fp16()
    folder = diffprune.save(pipe, tmp_path / "p", weights_format="bitmask")
    file = folder / "unet" / SPARSE_FILE
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DiffpruneError, match="SHA-256 differs"):
        diffprune.load(folder)
    with pytest.raises(DiffpruneError, match="damaged \\(not a readable"):
        diffprune.load(folder, verify=False)  # past the checksum: the decoder's own check
    file.write_bytes(data[:8] + b"#" + data[9:])  # garbled header (byte 8 opens the JSON header)
    with pytest.raises(DiffpruneError, match="damaged \\(not a readable"):
        diffprune.load(folder, verify=False)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(folder / "text_encoder" / SPARSE_FILE), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    victim = next(k for k, v in tensors.items() if k.endswith(".__values__") and v.numel())
    tensors[victim] = tensors[victim][:-1].clone()  # one value short of the mask
    save_file(tensors, str(folder / "text_encoder" / SPARSE_FILE), metadata=meta)
    file.write_bytes(data)
    with pytest.raises(DiffpruneError, match="values for"):
        diffprune.load(folder, verify=False)  # past the checksum: the decoder's own check


def test_unknown_weights_format_is_refused(tmp_path):
    with pytest.raises(DiffpruneError, match="unknown weights format"):
        diffprune.save(diffprune.load("random:tiny-sd"), tmp_path / "x", weights_format="zip")
    assert not (tmp_path / "x").exists()
