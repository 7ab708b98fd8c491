"""Few-shot generation metrics: intra-cluster diversity (CDC / DDPM-PA), distance to the training set, KID.

The paper's intra-LPIPS: assign every sample to its nearest training image, average the pairwise
distance of up to 50 members per cluster, average over the clusters. Clusters with fewer than two
members have no pairs and are left out ("non-empty" here means at least one pair). Higher is more
diverse. The mean distance from each sample to its nearest training image measures memorisation
(lower means closer copies). KID (Binkowski et al. 2018, torchmetrics' implementation) compares the
samples with a held-out reference set of the target domain in a classifier's feature space; unlike FID
it is unbiased at a few hundred samples.

Distances, none of which downloads anything; every result names the one it used:
- "classifier": LPIPS's recipe (Zhang et al. 2018, eq. 1 with unit layer weights) on the feature maps of
  the Fashion-MNIST source classifier (classifier.py, committed weights), for 1-channel 32x32 images;
- "lpips": LPIPS (AlexNet) when the `lpips` package and its AlexNet weights are already on disk;
- "haar": the multi-scale Haar distance below, weights-free; a cross-check of the others.
"auto" takes LPIPS when available, else the Haar distance.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import ddpm_pa_high_frequency, haar_dwt2d

MAX_CLUSTER_MEMBERS = 50
DISTANCES = ("auto", "classifier", "lpips", "haar")
FEATURE_CHUNK = 256


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


class ClassifierPerceptualDistance:
    """LPIPS's recipe on the source classifier: d(a, b) = mean over its 3 stages l of
    (1 / H_l W_l) sum_hw || u_l(a)_hw - u_l(b)_hw ||^2, where u_l is stage l's ReLU feature map unit-
    normalised over channels at each pixel (Zhang et al. 2018, eq. 1, all layer weights 1). In [0, 2].

    Images: (N, 1, 32, 32) in [-1, 1]. Raises ValueError for another shape.
    """

    name = "classifier-lpips"

    def __init__(self, classifier):
        self.classifier = classifier

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per stage, (N, C_l H_l W_l) float64 rows whose squared distances are that stage's term."""
        if images.shape[1:] != (1, 32, 32):
            raise ValueError(
                f"the classifier distance takes images of shape (N, 1, 32, 32), got {tuple(images.shape)}"
            )
        per_chunk = [self.classifier.stage_features(chunk.float()) for chunk in images.split(FEATURE_CHUNK)]
        stages = []
        for maps in zip(*per_chunk, strict=True):
            f = torch.cat(maps).double()
            unit = f / (f.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            stages.append(unit.flatten(1) / math.sqrt(f.shape[2] * f.shape[3]))
        return stages

    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(len(a), len(b)) distances."""
        terms = [
            torch.cdist(fa, fb, compute_mode="donot_use_mm_for_euclid_dist").square()
            for fa, fb in zip(self.features(a), self.features(b), strict=True)
        ]
        return torch.stack(terms).mean(0)


class LPIPSDistance:
    name = "lpips-alex"

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def matrix(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # AlexNet takes RGB: grey images are repeated over three channels.
        a, b = a.float().expand(-1, 3, -1, -1), b.float().expand(-1, 3, -1, -1)
        rows = []
        for x in a:
            rows.append(self.model(x[None].expand(len(b), -1, -1, -1), b).flatten())
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


def get_distance(kind: str = "auto", classifier_dir: str | Path | None = None):
    """The distance `kind` (DISTANCES); "classifier" loads the classifier in classifier_dir (default: the
    committed Fashion-MNIST one). Raises ValueError for an unknown kind, RuntimeError when LPIPS is asked
    for and not on disk, FileNotFoundError when the classifier's files are missing."""
    if kind not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {kind!r}")
    if kind == "classifier":
        from .classifier import load_classifier
        from .fashion import CLASSIFIER_DIR

        return ClassifierPerceptualDistance(load_classifier(classifier_dir or CLASSIFIER_DIR))
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


class _PooledFeatures(torch.nn.Module):
    """The classifier's pooled penultimate features as the nn.Module that torchmetrics' KID calls."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images.float()).double()


@torch.no_grad()
def kid(
    samples: torch.Tensor, reference: torch.Tensor, classifier, subsets: int = 100, seed: int = 0
) -> dict:
    """KID (unbiased MMD^2, cubic polynomial kernel) between samples and reference images in the
    classifier's 64-d pooled feature space, via torchmetrics. Subsets of min(len(samples), len(reference))
    images each; their mean and standard deviation. Deterministic for a given seed. Lower is closer.
    Raises ValueError with fewer than 2 samples or reference images: the unbiased MMD divides by
    m (m - 1) (torchmetrics returns NaN there)."""
    import warnings

    if len(samples) < 2 or len(reference) < 2:
        raise ValueError(
            "KID needs at least 2 samples and 2 reference images (its unbiased MMD divides by m (m - 1)), "
            f"got {len(samples)} samples and {len(reference)} reference images"
        )

    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(len(samples), len(reference))
    with warnings.catch_warnings():
        # Its warning that features are kept in memory: a few thousand 64-d vectors here.
        warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
        metric = KernelInceptionDistance(
            feature=_PooledFeatures(classifier), subsets=subsets, subset_size=size
        )
    for chunk in reference.split(FEATURE_CHUNK):
        metric.update(chunk, real=True)
    for chunk in samples.split(FEATURE_CHUNK):
        metric.update(chunk, real=False)
    # torchmetrics draws its subsets from the global RNG; a private, seeded stream keeps runs comparable.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return {"kid": mean.item(), "kid_std": std.item(), "kid_subset_size": size}


@torch.no_grad()
def class_probabilities(images: torch.Tensor, classifier) -> torch.Tensor:
    """(N, num_classes) softmax of the classifier's logits."""
    return torch.cat([classifier(chunk.float()).softmax(1) for chunk in images.split(FEATURE_CHUNK)])


@torch.no_grad()
def fidelity(images: torch.Tensor, classifier, label: int, threshold: float = 0.5) -> float:
    """The share of images (N, C, H, W) in [-1, 1] that the classifier puts in class `label` with
    probability > threshold: are they of the target class at all? Distances and KID, computed in a space
    that never saw the target class, score an unrecognisable texture as "different"; this does not.
    Raises ValueError for an empty batch (a share of nothing is not a number) or a label the classifier
    does not have."""
    if len(images) == 0:
        raise ValueError("fidelity needs at least 1 image, got 0")
    probabilities = class_probabilities(images, classifier)
    if not 0 <= label < probabilities.shape[1]:
        raise ValueError(f"label must be in [0, {probabilities.shape[1]}), got {label}")
    return (probabilities[:, label] > threshold).double().mean().item()


def evaluate_samples(samples: torch.Tensor, train: torch.Tensor, distance=None) -> dict:
    """Metrics of samples (N, C, H, W) against the training images (M, C, H, W), both in [-1, 1].

    Raises ValueError for N < 2 or M < 1, and when no training image has 2 samples nearest to it
    (intra-cluster diversity has no pair to average; N > M guarantees one)."""
    if len(samples) < 2 or len(train) < 1:
        raise ValueError(
            "intra-cluster diversity needs at least 2 samples and 1 training image, got "
            f"{len(samples)} samples and {len(train)} training images"
        )
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
    if not cluster_means:
        raise ValueError(
            f"no training image has 2 of the {len(samples)} samples nearest to it, so intra-cluster "
            f"diversity has no pair to average: evaluate more samples (more than {len(train)}, the "
            "training images, guarantees a pair)"
        )
    return {
        "distance": distance.name,
        "num_samples": len(samples),
        "intra_cluster_diversity": sum(cluster_means) / len(cluster_means),
        "clusters_with_pairs": len(cluster_means),
        "cluster_sizes": sizes,
        "nearest_train_distance": to_train.min(dim=1).values.mean().item(),
        "hf_energy": hf_energy(samples),
    }
