"""The reference against independent derivations: the authors' conv formulation, pytorch_wavelets,
pywt, and pair loops with F.cosine_similarity and nn.KLDivLoss, the way the authors wrote them."""

import itertools

import numpy as np
import pytest
import pywt
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_pa_fast import reference as R
from tests.common import DWT_MODES, IMAGE_SHAPES, KL_REDUCTIONS, make_loss_sample, randn, similar_features

pytorch_wavelets = pytest.importorskip("pytorch_wavelets")


def authors_high_frequency(x):
    """LH + HL + HH as the authors' get_wave builds them: outer products of L = [1, 1]/sqrt2 and
    H = [-1, 1]/sqrt2, applied as depthwise 2x2 stride-2 convolutions, then summed."""
    low = np.array([[1.0, 1.0]]) / np.sqrt(2)
    high = np.array([[-1.0, 1.0]]) / np.sqrt(2)
    total = 0
    for a, b in ((low, high), (high, low), (high, high)):  # LH = L^T H, HL = H^T L, HH = H^T H
        weight = torch.from_numpy(a.T * b).to(x.dtype).expand(x.shape[1], 1, 2, 2)
        total = total + F.conv2d(x, weight, stride=2, groups=x.shape[1])
    return total


def authors_pairwise_kl(src, ada, tau=1.0, reduction="mean"):
    """The CDC / DDPM-PA double loop: similarities of each sample to every other one, row softmax,
    nn.KLDivLoss(log P_ada, P_src)."""
    n = src.shape[0]
    sim = nn.CosineSimilarity()

    def similarities(f):
        rows = []
        for i in range(n):
            rows.append(
                torch.stack([sim(f[i].reshape(1, -1), f[j].reshape(1, -1))[0] for j in range(n) if j != i])
            )
        return torch.stack(rows)

    p_src = F.softmax(similarities(src.detach()) / tau, dim=1)
    p_ada = F.softmax(similarities(ada) / tau, dim=1)
    if reduction == "none":
        return nn.KLDivLoss(reduction="none")(torch.log(p_ada), p_src).sum(dim=1)
    return nn.KLDivLoss(reduction=reduction)(torch.log(p_ada), p_src)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 4, 9, 7), (1, 1, 2, 2), (2, 2, 17, 33)])
def test_high_frequency_matches_authors_conv_formulation(shape):
    x = randn(shape)
    hf = R.ddpm_pa_high_frequency(x)
    assert hf.shape == (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    torch.testing.assert_close(hf, authors_high_frequency(x), rtol=1e-12, atol=1e-12)


def test_high_frequency_is_band3_minus_band1_minus_band2():
    """Pins the relation between DDPM-PA's map and the libraries' orthonormal bands (spec)."""
    x = randn((2, 3, 10, 12))
    _, (yh,) = R.haar_dwt2d(x)
    torch.testing.assert_close(R.ddpm_pa_high_frequency(x), yh[:, :, 2] - yh[:, :, 0] - yh[:, :, 1])


@pytest.mark.parametrize("mode", DWT_MODES)
@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_dwt_matches_pytorch_wavelets(shape, levels, mode):
    x = randn(shape, seed=levels)
    yl, yh = R.haar_dwt2d(x, levels, mode)
    ref_yl, ref_yh = pytorch_wavelets.DWTForward(J=levels, wave="haar", mode=mode).double()(x)
    # pytorch_wavelets keeps its filters rounded to float32 (1/sqrt2 to ~3e-8), hence the tolerance.
    torch.testing.assert_close(yl, ref_yl, rtol=1e-6, atol=1e-6)
    assert len(yh) == len(ref_yh) == levels
    for ours, theirs in zip(yh, ref_yh, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    inverse = pytorch_wavelets.DWTInverse(wave="haar", mode=mode).double()((ref_yl, ref_yh))
    torch.testing.assert_close(R.haar_idwt2d(yl, yh, mode), inverse, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", DWT_MODES)
@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (1, 1, 9, 7), (1, 1, 5, 12), (1, 1, 1, 1)])
def test_dwt_matches_pywt(shape, levels, mode):
    """pywt's wavedec2 in float64: (cH, cV, cD) of each level are yh[:, :, 0..2]."""
    x = randn(shape, seed=7)
    yl, yh = R.haar_dwt2d(x, levels, mode)
    coeffs = pywt.wavedec2(x[0, 0].numpy(), "haar", mode=mode, level=levels)
    np.testing.assert_allclose(yl[0, 0].numpy(), coeffs[0], rtol=1e-12, atol=1e-12)
    for j, details in enumerate(reversed(coeffs[1:])):
        for k, band in enumerate(details):
            np.testing.assert_allclose(yh[j][0, 0, k].numpy(), band, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", DWT_MODES)
@pytest.mark.parametrize("levels", [1, 2, 4])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 2, 2), (2, 3, 7, 5), (1, 4, 16, 16), (1, 2, 13, 1)])
def test_perfect_reconstruction(shape, levels, mode):
    x = randn(shape, seed=3)
    out = R.haar_idwt2d(*R.haar_dwt2d(x, levels, mode), mode)
    # For odd sizes the output has the padded row/column after the input's, as in pytorch_wavelets.
    assert out.shape[-2] >= shape[-2] and out.shape[-1] >= shape[-1]
    torch.testing.assert_close(out[..., : shape[-2], : shape[-1]], x, rtol=1e-12, atol=1e-12)


def test_idwt_treats_missing_detail_as_zero():
    x = randn((2, 3, 8, 8))
    yl, yh = R.haar_dwt2d(x, 2)
    with_none = R.haar_idwt2d(yl, [yh[0], None])
    with_zeros = R.haar_idwt2d(yl, [yh[0], torch.zeros_like(yh[1])])
    torch.testing.assert_close(with_none, with_zeros)


@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("shape", [(2, 5), (3, 3, 8, 8), (6, 40)])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_pairwise_kl_matches_authors_loop(shape, reduction, tau):
    src, ada = similar_features(shape)
    ada.requires_grad_(True)
    ours = R.pairwise_similarity_kl(src, ada, tau, reduction)
    theirs = authors_pairwise_kl(src, ada, tau, reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    upstream = torch.rand_like(ours) + 0.5
    (g_ours,) = torch.autograd.grad(ours, ada, upstream)
    (g_theirs,) = torch.autograd.grad(theirs, ada, upstream)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-8, atol=1e-12)


def test_pairwise_kl_mean_divides_by_pairs():
    """'mean' is nn.KLDivLoss()'s default: the sum over N (N - 1) entries divided by N (N - 1)."""
    src, ada = similar_features((5, 12))
    total = R.pairwise_similarity_kl(src, ada, reduction="sum")
    torch.testing.assert_close(R.pairwise_similarity_kl(src, ada), total / 20)
    torch.testing.assert_close(R.pairwise_similarity_kl(src, ada, reduction="batchmean"), total / 5)
    torch.testing.assert_close(R.pairwise_similarity_kl(src, ada, reduction="none").sum(), total)
    assert total > 0


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (3, 4, 9, 7), (5, 1, 6, 10)])
def test_loss_matches_term_by_term_composition(shape, reduction):
    s = make_loss_sample(shape, seed=11)
    eps_ada = s.eps_ada.clone().requires_grad_(True)
    w = dict(w_pair=2.5, w_hf_pair=0.7, w_hf_mse=1.3)
    out = R.ddpm_pa_loss(s.x_t, eps_ada, s.eps_src, s.noise, s.a_t, s.b_t, **w, tau=0.8, reduction=reduction)

    a, b = s.a_t.view(-1, 1, 1, 1), s.b_t.view(-1, 1, 1, 1)
    x0_ada = a * s.x_t - b * eps_ada
    x0_src = a * s.x_t - b * s.eps_src
    x0_tgt = a * s.x_t - b * s.noise
    mse = F.mse_loss(eps_ada, s.noise)
    hf_mse = F.mse_loss(authors_high_frequency(x0_ada), authors_high_frequency(x0_tgt))
    pair_img = authors_pairwise_kl(x0_src, x0_ada, 0.8, reduction)
    pair_hf = authors_pairwise_kl(
        authors_high_frequency(x0_src), authors_high_frequency(x0_ada), 0.8, reduction
    )
    loss = mse + 2.5 * pair_img + 0.7 * pair_hf + 1.3 * hf_mse
    for ours, theirs in zip(out, (loss, mse, hf_mse, pair_img, pair_hf), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-13)
    (g_ours,) = torch.autograd.grad(out.loss, eps_ada)
    (g_theirs,) = torch.autograd.grad(loss, eps_ada)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-8, atol=1e-13)


def test_loss_default_weights_are_the_authors():
    s = make_loss_sample((3, 3, 8, 8))
    out = R.ddpm_pa_loss(*s.args())
    torch.testing.assert_close(out.loss, out.mse + 4 * out.pair_img + 4 * out.pair_hf + 1 * out.hf_mse)


def test_loss_accepts_4d_coefficients():
    flat = make_loss_sample((3, 3, 8, 8), seed=2)
    four_d = make_loss_sample((3, 3, 8, 8), seed=2, coef_shape="4d")
    for x, y in zip(R.ddpm_pa_loss(*flat.args()), R.ddpm_pa_loss(*four_d.args()), strict=True):
        torch.testing.assert_close(x, y)


def test_only_eps_ada_gets_a_gradient():
    s = make_loss_sample((3, 3, 8, 8))
    leaves = [t.clone().requires_grad_(True) for t in s.args()]
    R.ddpm_pa_loss(*leaves).loss.backward()
    assert leaves[1].grad is not None and leaves[1].grad.abs().sum() > 0
    for i in (0, 2, 3, 4, 5):
        assert leaves[i].grad is None


# --- gradcheck in float64 -------------------------------------------------------------------------


def test_gradcheck_high_frequency():
    x = randn((2, 2, 5, 6)).requires_grad_(True)
    assert torch.autograd.gradcheck(R.ddpm_pa_high_frequency, (x,))


@pytest.mark.parametrize("mode", DWT_MODES)
def test_gradcheck_dwt_and_idwt(mode):
    x = randn((1, 2, 5, 6)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: torch.cat([c.flatten() for c in (lambda yl, yh: [yl, *yh])(*R.haar_dwt2d(t, 2, mode))]),
        (x,),
    )
    yl, yh = R.haar_dwt2d(x.detach(), 2, mode)
    leaves = [yl.requires_grad_(True)] + [h.requires_grad_(True) for h in yh]
    assert torch.autograd.gradcheck(lambda low, h0, h1: R.haar_idwt2d(low, [h0, h1], mode), tuple(leaves))


@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
def test_gradcheck_pairwise_kl(reduction):
    src, ada = similar_features((4, 7))
    ada.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: R.pairwise_similarity_kl(src, a, 0.7, reduction), (ada,))


def test_gradcheck_loss():
    s = make_loss_sample((3, 2, 5, 6))
    eps_ada = s.eps_ada.clone().requires_grad_(True)

    def terms(e):
        return torch.stack(list(R.ddpm_pa_loss(s.x_t, e, s.eps_src, s.noise, s.a_t, s.b_t, tau=0.9)))

    assert torch.autograd.gradcheck(terms, (eps_ada,))


# --- degenerate inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 9), (5, 3, 4, 4)])
def test_identical_batches_give_zero_kl_and_zero_gradient(shape):
    src = randn(shape)
    ada = src.clone().requires_grad_(True)
    kl = R.pairwise_similarity_kl(src, ada)
    kl.backward()
    assert abs(kl.item()) < 1e-14
    assert ada.grad.abs().max().item() < 1e-14


def test_all_zero_images_give_finite_loss_and_gradient():
    shape = (3, 4, 8, 8)  # a 4-channel latent batch
    zeros = torch.zeros(shape, dtype=torch.float64)
    eps_ada = zeros.clone().requires_grad_(True)
    out = R.ddpm_pa_loss(
        zeros, eps_ada, zeros, zeros, torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    )
    out.loss.backward()
    assert all(torch.isfinite(t) for t in out)
    assert torch.isfinite(eps_ada.grad).all()
    # All similarities are 0, so both softmaxes are uniform and the KL is exactly 0.
    assert out.pair_img.item() == 0 and out.pair_hf.item() == 0


def test_n2_and_latents():
    s = make_loss_sample((2, 4, 16, 16))
    eps_ada = s.eps_ada.clone().requires_grad_(True)
    out = R.ddpm_pa_loss(s.x_t, eps_ada, s.eps_src, s.noise, s.a_t, s.b_t)
    out.loss.backward()
    # With N = 2 each row has one entry, whose softmax is 1 on both sides: the pair terms vanish.
    assert out.pair_img.item() == 0 and out.pair_hf.item() == 0
    assert out.mse > 0 and out.hf_mse > 0 and torch.isfinite(eps_ada.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_reference_runs_in_every_float_dtype(dtype):
    s = make_loss_sample((3, 3, 8, 8), dtype=dtype)
    out = R.ddpm_pa_loss(*s.args())
    assert all(t.dtype == dtype for t in out)
    truth = R.ddpm_pa_loss(*s.to(dtype=torch.float64).args())
    torch.testing.assert_close(out.mse.double(), truth.mse, rtol=2e-2, atol=1e-3)


def test_inputs_are_never_modified():
    s = make_loss_sample((3, 3, 9, 8))
    before = [t.clone() for t in s.args()]
    eps_ada = s.eps_ada.requires_grad_(True)
    R.ddpm_pa_loss(s.x_t, eps_ada, s.eps_src, s.noise, s.a_t, s.b_t).loss.backward()
    x = randn((2, 3, 7, 9))
    x_before = x.clone()
    yl, yh = R.haar_dwt2d(x, 2, "symmetric")
    yh_before = [h.clone() for h in yh]
    R.haar_idwt2d(yl, yh)
    R.ddpm_pa_high_frequency(x)
    for t, b in itertools.chain(
        zip(s.args(), before, strict=True), [(x, x_before)], zip(yh, yh_before, strict=True)
    ):
        assert torch.equal(t.detach(), b)
