"""Few-shot generation metrics: intra-cluster diversity (CDC / DDPM-PA) and distance to the training set.

The paper's intra-LPIPS: assign every sample to its nearest training image, average the pairwise
distance of up to 50 members per cluster, average over the clusters. Clusters with fewer than two
members have no pairs and are left out ("non-empty" here means at least one pair). Higher is more
diverse. The mean distance from each sample to its nearest training image measures memorisation
(lower means closer copies). LPIPS is used when the `lpips` package and its AlexNet weights are on disk;
otherwise a fixed distance that needs no download: the multi-scale Haar distance below. Every result
names the distance it used.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import ddpm_pa_high_frequency, haar_dwt2d

MAX_CLUSTER_MEMBERS = 50
DISTANCES = ("auto", "lpips", "haar")


class HaarMultiscaleDistance:
    """Mean over scales of the RMS difference of orthonormal Haar DWT coefficients.

    Scales: the three detail bands of each of `levels` levels, and the coarsest approximation, each
    weighted equally, so fine texture counts as much as coarse layout. Images in [-1, 1].
    """

    name = "haar-multiscale-rms"

    def __init__(self, levels: int = 3):
        self.levels = levels

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        levels = max(1, min(self.levels, int(math.log2(min(images.shape[-2:])))))
        yl, yh = haar_dwt2d(images.double(), levels, backend="torch")
        return [band.flatten(1) for band in yh] + [yl.flatten(1)]

    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(len(a), len(b)) distances."""
        groups = [
            torch.cdist(fa, fb) / math.sqrt(fa.shape[1])
            for fa, fb in zip(self.features(a), self.features(b), strict=True)
        ]
        return torch.stack(groups).mean(0)


class LPIPSDistance:
    name = "lpips-alex"

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        rows = []
        for x in a:
            rows.append(self.model(x[None].expand(len(b), -1, -1, -1).float(), b.float()).flatten())
        return torch.stack(rows).double()


def lpips_unavailable_reason() -> str | None:
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "the lpips package is not installed"
    backbone = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not backbone.is_file():
        return f"AlexNet weights are not on disk ({backbone}); nothing is downloaded"
    return None


def get_distance(kind: str = "auto"):
    if kind not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {kind!r}")
    if kind in ("auto", "lpips"):
        reason = lpips_unavailable_reason()
        if reason is None:
            import lpips

            return LPIPSDistance(lpips.LPIPS(net="alex", verbose=False).eval())
        if kind == "lpips":
            raise RuntimeError(f"LPIPS is not available: {reason}")
    return HaarMultiscaleDistance()


def hf_energy(images: torch.Tensor) -> float:
    """Mean square of DDPM-PA's Haar high-frequency map: how much fine texture the images hold."""
    return ddpm_pa_high_frequency(images.double(), backend="torch").square().mean().item()


def evaluate_samples(samples: torch.Tensor, train: torch.Tensor, distance=None) -> dict:
    """Metrics of samples (N, C, H, W) against the training images (M, C, H, W), both in [-1, 1]."""
    if samples.shape[1:] != train.shape[1:]:
        raise ValueError(
            f"samples have shape {tuple(samples.shape[1:])} per image, the training images "
            f"{tuple(train.shape[1:])}"
        )
    distance = distance or get_distance("auto")
    to_train = distance.matrix(samples, train)
    nearest = to_train.argmin(dim=1)
    cluster_means, sizes = [], []
    for j in range(len(train)):
        members = samples[nearest == j][:MAX_CLUSTER_MEMBERS]
        sizes.append(int((nearest == j).sum()))
        if len(members) < 2:
            continue
        pairwise = distance.matrix(members, members)
        upper = torch.triu_indices(len(members), len(members), offset=1)
        cluster_means.append(pairwise[upper[0], upper[1]].mean().item())
    return {
        "distance": distance.name,
        "num_samples": len(samples),
        "intra_cluster_diversity": sum(cluster_means) / len(cluster_means) if cluster_means else float("nan"),
        "clusters_with_pairs": len(cluster_means),
        "cluster_sizes": sizes,
        "nearest_train_distance": to_train.min(dim=1).values.mean().item(),
        "hf_energy": hf_energy(samples),
    }
