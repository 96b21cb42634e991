"""The ``fidelity`` suite: a compressed pipeline against its uncompressed reference, same prompts and seeds.

PSNR and SSIM compare the images pixel by pixel; the cosine similarity of features (the shapes evaluator's for
64x64 testbed images, or a local CLIP's image embeddings) compares what the images show. On testbed images the
agreement metrics compare what the evaluator reads in each pair: they stay sensitive where the reference itself
draws the prompt wrong.
"""

from __future__ import annotations

import torch

PSNR_CAP_DB = 100.0  # identical images: PSNR is infinite; report this cap instead


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]."""
    mse = (images.double() - reference.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))).float()


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (torchmetrics, Gaussian window) of images in [0, 1].

    Computed in float64: on flat images (the testbed's backgrounds) float32 rounding alone moves SSIM by ~1e-5.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(images.double(), reference.double(), data_range=1.0,
                                               reduction="none").float()


def feature_cosine(features, images: torch.Tensor, reference: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Per-image cosine similarity of ``features(images)`` and ``features(reference)``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            a, b = features(images[i:i + batch_size]), features(reference[i:i + batch_size])
            out.append(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1))
    return torch.cat(out)


def fidelity_metrics(images: torch.Tensor, reference: torch.Tensor, features=None) -> dict:
    """Mean PSNR, SSIM and (if ``features`` is given) feature cosine of two aligned image sets."""
    if images.shape != reference.shape:
        from ..errors import DiffpruneError

        raise DiffpruneError(f"fidelity needs images of one size: {tuple(images.shape)} vs {tuple(reference.shape)}")
    metrics = {"psnr": float(psnr(images, reference).mean()), "ssim": float(ssim(images, reference).mean())}
    if features is not None:
        metrics["feature_cosine"] = float(feature_cosine(features, images, reference).mean())
    return metrics


AGREEMENT_ATTRIBUTES = ("color", "shape", "size", "position")


def reading_agreement(readings: list, reference: list) -> dict:
    """Per attribute, the share of image pairs in which the evaluator reads the same thing in both images.

    ``readings`` / ``reference``: one list of detections (with ``position``, ``color``, ``shape``, ``size``) per
    image. An attribute agrees when the two images hold the same multiset of its values (so the same number of
    objects too); ``agreement_count`` compares the numbers of objects, ``agreement_all`` whole objects.
    """
    if len(readings) != len(reference):
        raise ValueError("reading_agreement needs one reading per reference image")
    n = max(1, len(readings))

    def same(key) -> float:
        return sum(sorted(map(key, a)) == sorted(map(key, b)) for a, b in zip(readings, reference)) / n

    out = {"agreement_all": same(lambda d: (d.position, d.color, d.shape, d.size)),
           "agreement_count": sum(len(a) == len(b) for a, b in zip(readings, reference)) / n}
    for attribute in AGREEMENT_ATTRIBUTES:
        out[f"agreement_{attribute}"] = same(lambda d, attribute=attribute: getattr(d, attribute))
    return out
