"""FID against a folder of reference images, with locally provided Inception weights (torchmetrics + torch-fidelity).

torchmetrics' ``FrechetInceptionDistance`` builds the standard FID Inception network through torch-fidelity
and reads its weights from ``feature_extractor_weights_path`` -- the file torch-fidelity would otherwise
download (``pt_inception-2015-12-05-6726825d.pth``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DiffpruneError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_image_folder(folder: str | Path, size: int | None = None) -> torch.Tensor:
    """Every image in ``folder`` as ``(N, 3, H, W)`` float in [0, 1] (resized to ``size`` if given)."""
    from PIL import Image

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DiffpruneError(f"reference images: no such folder {path}")
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise DiffpruneError(f"reference images: {path} holds {len(files)} images; FID needs at least 2")
    arrays = []
    for f in files:
        with Image.open(f) as img:
            img = img.convert("RGB")
            if size:
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            arrays.append(np.asarray(img))
    if len({a.shape for a in arrays}) != 1:
        raise DiffpruneError(f"reference images in {path} differ in size; pass a size to resize them")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def check_fid_inputs(inception_weights: str | Path | None) -> Path:
    """The Inception weights file, or one clear error (missing option, file or torch-fidelity)."""
    if not inception_weights:
        raise DiffpruneError("FID needs local Inception weights: pass --inception-weights PATH "
                             "(torch-fidelity's pt_inception-2015-12-05 file)")
    weights = Path(inception_weights).expanduser()
    if not weights.is_file():
        raise DiffpruneError(f"FID: no Inception weights file at {weights}")
    try:  # torch-fidelity unpickles the file itself, on older torch without weights_only: check it first
        torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DiffpruneError(f"FID: {weights} is not a plain weights file (it holds pickled objects other than "
                             "tensors); refusing to load it") from None
    except Exception as e:
        raise DiffpruneError(f"FID: cannot read Inception weights {weights}: {first_line(e, 160)}") from None
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise DiffpruneError("FID needs torch-fidelity: pip install 'diffprune[fid]'") from None
    return weights


def fid_metric(inception_weights: str | Path | None):
    """torchmetrics' FID metric built on the local Inception weights (one clear error if they do not load)."""
    weights = check_fid_inputs(inception_weights)
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights),
                                        sync_on_compute=False)
    except Exception as e:  # a user's file: report it in one line
        raise DiffpruneError(f"FID: cannot load Inception weights from {weights}: {first_line(e)}") from None


def fid(images: torch.Tensor, reference: torch.Tensor, inception_weights=None, batch_size: int = 32,
        metric=None) -> float:
    """FID (2048-d Inception pool features) of ``images`` against ``reference``, both in [0, 1].

    Pass ``metric`` (from :func:`fid_metric`) to reuse a network already loaded."""
    if min(len(images), len(reference)) < 2:
        raise DiffpruneError("FID needs at least 2 generated and 2 reference images")
    metric = metric or fid_metric(inception_weights)
    metric.reset()
    with torch.no_grad():
        for data, real in ((reference, True), (images, False)):
            for i in range(0, len(data), batch_size):
                metric.update(data[i:i + batch_size], real=real)
    return float(metric.compute())
