"""Evaluation metrics: intra-cluster diversity, memorisation distance and the distance's name."""

import pytest
import torch

from ddpm_pa_fast.train import evaluate as E


class _AbsMeanDistance:
    """A distance whose values are easy to work out by hand: |mean(x) - mean(y)|."""

    name = "abs-mean"

    def matrix(self, a, b):
        return (a.flatten(1).mean(1)[:, None] - b.flatten(1).mean(1)[None, :]).abs().double()


def test_intra_cluster_diversity_by_hand():
    train = torch.tensor([0.0, 10.0, 20.0]).reshape(3, 1, 1, 1).expand(3, 1, 2, 2).clone()
    values = [0.0, 1.0, 3.0, 10.0, 12.0, 19.0]
    samples = torch.tensor(values).reshape(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    m = E.evaluate_samples(samples, train, _AbsMeanDistance())
    # clusters: {0, 1, 3} -> pairs 1, 3, 2 -> 2; {10, 12} -> 2; {19} has no pair and is left out.
    assert m["cluster_sizes"] == [3, 2, 1]
    assert m["clusters_with_pairs"] == 2
    assert m["intra_cluster_diversity"] == pytest.approx(2.0)
    assert m["nearest_train_distance"] == pytest.approx((0 + 1 + 3 + 0 + 2 + 1) / 6)
    assert m["distance"] == "abs-mean"


def test_copies_of_the_training_set_have_zero_memorisation_distance():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    m = E.evaluate_samples(train.repeat(3, 1, 1, 1), train, E.HaarMultiscaleDistance())
    assert m["nearest_train_distance"] == pytest.approx(0.0, abs=1e-12)
    assert m["intra_cluster_diversity"] == pytest.approx(0.0, abs=1e-12)
    assert m["distance"] == "haar-multiscale-rms"


def test_haar_distance_is_a_metric_that_sees_texture():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    d = E.HaarMultiscaleDistance().matrix(x, x)
    assert torch.allclose(d, d.T) and torch.all(d.diagonal() < 1e-12) and torch.all(d + torch.eye(3) > 0)
    flat = torch.zeros(1, 3, 16, 16)
    checker = flat.clone()
    checker[..., ::2, ::2] = 0.5
    checker[..., 1::2, 1::2] = -0.5  # same mean as flat: only the fine detail bands differ
    assert E.HaarMultiscaleDistance().matrix(flat, checker).item() > 0.1


def test_auto_distance_names_itself_and_lpips_request_is_explained():
    distance = E.get_distance("auto")
    assert distance.name in ("haar-multiscale-rms", "lpips-alex")
    reason = E.lpips_unavailable_reason()
    if reason is not None:
        with pytest.raises(RuntimeError, match="LPIPS is not available"):
            E.get_distance("lpips")
    with pytest.raises(ValueError, match="distance must be one of"):
        E.get_distance("fid")


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="per image"):
        E.evaluate_samples(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 16, 16))


def _images(values):
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


@pytest.mark.parametrize(
    "samples, train, pattern",
    [
        ([0.0], [0.0, 10.0], "at least 2 samples and 1 training image, got 1 samples"),
        ([], [0.0], "at least 2 samples and 1 training image, got 0 samples"),
        ([0.0, 1.0], [], "got 2 samples and 0 training images"),
        # Two samples, each nearest to another training image: no cluster has a pair.
        ([0.0, 10.0], [0.0, 10.0], r"no training image has 2 of the 2 samples.*more than 2"),
    ],
)
def test_too_few_samples_for_the_diversity_are_named_never_nan(samples, train, pattern):
    """toshas/torch-fidelity#8's kind (issue 21 H): too few inputs give an error naming the count, not NaN."""
    with pytest.raises(ValueError, match=pattern):
        E.evaluate_samples(_images(samples), _images(train), _AbsMeanDistance())


@pytest.mark.parametrize("n_samples, n_reference", [(1, 50), (50, 1), (0, 5)])
def test_kid_on_too_few_images_names_the_count_never_nan(n_samples, n_reference):
    from ddpm_pa_fast.train.classifier import SourceClassifier

    classifier = SourceClassifier().eval()
    with pytest.raises(
        ValueError,
        match=rf"KID needs at least 2 samples and 2 reference images.*got {n_samples} samples "
        rf"and {n_reference} reference",
    ):
        E.kid(torch.zeros(n_samples, 1, 32, 32), torch.zeros(n_reference, 1, 32, 32), classifier)


def test_kid_on_two_images_each_is_finite():
    from ddpm_pa_fast.train.classifier import SourceClassifier

    torch.manual_seed(0)
    classifier = SourceClassifier().eval()
    g = torch.Generator().manual_seed(0)
    result = E.kid(torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g), classifier)
    assert result["kid_subset_size"] == 2 and torch.isfinite(torch.tensor(result["kid"]))
