"""The public API: functions and modules, backend choice, and the errors bad input gets."""

import pytest
import torch

import ddpm_pa_fast as D
from ddpm_pa_fast import reference as R
from tests.common import make_loss_sample, randn, similar_features

pytorch_wavelets = pytest.importorskip("pytorch_wavelets")


def test_functions_with_torch_backend_are_the_reference():
    s = make_loss_sample((3, 3, 9, 8))
    for ours, ref in zip(D.ddpm_pa_loss(*s.args(), backend="torch"), R.ddpm_pa_loss(*s.args()), strict=True):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    x = randn((2, 3, 9, 8))
    torch.testing.assert_close(D.ddpm_pa_high_frequency(x, backend="torch"), R.ddpm_pa_high_frequency(x))
    src, ada = similar_features((4, 10))
    torch.testing.assert_close(
        D.pairwise_similarity_kl(src, ada, 0.5, "sum", backend="torch"),
        R.pairwise_similarity_kl(src, ada, 0.5, "sum"),
    )


@pytest.mark.parametrize("mode", ["zero", "symmetric", "periodization"])
@pytest.mark.parametrize("J", [1, 3])
def test_dwt_modules_drop_in_for_pytorch_wavelets(J, mode):
    x = randn((2, 3, 13, 10), dtype=torch.float32)
    ours = D.DWTForward(J=J, wave="haar", mode=mode)
    theirs = pytorch_wavelets.DWTForward(J=J, wave="haar", mode=mode)
    (yl, yh), (ref_yl, ref_yh) = ours(x), theirs(x)
    torch.testing.assert_close(yl, ref_yl, rtol=1e-5, atol=1e-5)
    for a, b in zip(yh, ref_yh, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    back = D.DWTInverse(wave="haar", mode=mode)((yl, yh))
    ref_back = pytorch_wavelets.DWTInverse(wave="haar", mode=mode)((ref_yl, ref_yh))
    torch.testing.assert_close(back, ref_back, rtol=1e-5, atol=1e-5)


def test_modules_match_functions():
    s = make_loss_sample((4, 3, 8, 8))
    module = D.DDPMPALoss(
        w_pair=1.0, w_hf_pair=2.0, w_hf_mse=3.0, tau=0.5, reduction="batchmean", backend="torch"
    )
    for a, b in zip(
        module(*s.args()), R.ddpm_pa_loss(*s.args(), 1.0, 2.0, 3.0, 0.5, "batchmean"), strict=True
    ):
        torch.testing.assert_close(a, b)
    assert isinstance(module(*s.args()), D.DDPMPALossOutput)
    src, ada = similar_features((3, 6))
    torch.testing.assert_close(
        D.PairwiseSimilarityKL(tau=2.0, reduction="none")(src, ada),
        R.pairwise_similarity_kl(src, ada, 2.0, "none"),
    )
    x = randn((2, 1, 6, 6))
    torch.testing.assert_close(D.DDPMPAHighFrequency()(x), R.ddpm_pa_high_frequency(x))
    assert "w_pair=1.0" in repr(module)


def test_auto_backend_on_cpu_is_an_available_one():
    name = D.backend_name("auto", torch.device("cpu"))
    assert name in D.available_backends("cpu")
    assert "torch" in D.available_backends("cpu")


def test_unavailable_backend_says_how_to_get_it():
    x = randn((2, 3, 4, 4))
    with pytest.raises(D.BackendUnavailableError, match="backend 'cuda' is not available.*CUDA tensors"):
        D.ddpm_pa_high_frequency(x, backend="cuda")


@pytest.mark.parametrize("backend", ["gpu", "", None])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match="backend must be one of"):
        D.ddpm_pa_high_frequency(randn((2, 3, 4, 4)), backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        D.DDPMPALoss(backend=backend)


# --- bad input: each error names the argument and what was expected -------------------------------

S = make_loss_sample((3, 3, 8, 8))
GOOD = dict(x_t=S.x_t, eps_ada=S.eps_ada, eps_src=S.eps_src, noise=S.noise, a_t=S.a_t, b_t=S.b_t)


# Every CPU backend: the public layer's checks (and its fast path for the common call) are shared, so a
# bad input must be refused with the same words whichever backend would run it.
CPU_BACKENDS = ["torch", "cpu"]


def _loss(backend="torch", **changes):
    args = {**GOOD, **changes}
    return D.ddpm_pa_loss(**args, backend=backend)


@pytest.mark.parametrize(
    "changes, error, pattern",
    [
        (dict(x_t=S.x_t[0]), ValueError, r"x_t must be a 4-D tensor"),
        (dict(eps_ada=S.eps_ada[:, :2]), ValueError, r"eps_ada must have the shape of x_t"),
        (dict(eps_src=S.eps_src.to(torch.int64)), TypeError, r"eps_src must have a floating dtype"),
        (
            dict(
                x_t=S.x_t[:1],
                eps_ada=S.eps_ada[:1],
                eps_src=S.eps_src[:1],
                noise=S.noise[:1],
                a_t=S.a_t[:1],
                b_t=S.b_t[:1],
            ),
            ValueError,
            r"x_t must hold at least 2 samples",
        ),
        (dict(a_t=S.a_t[:2]), ValueError, r"a_t must hold one value per sample"),
        (dict(b_t=S.b_t.view(3, 1)), ValueError, r"b_t must hold one value per sample"),
        (dict(b_t=S.b_t.to("meta")), ValueError, r"b_t must be on the device of x_t"),
        (dict(noise=S.noise.to("meta")), ValueError, r"noise must be on the device of x_t"),
        (dict(eps_ada=[1.0]), TypeError, r"eps_ada must be a torch.Tensor"),
        (dict(x_t=S.x_t.numpy()), TypeError, r"x_t must be a torch.Tensor"),
        (dict(a_t=S.a_t.to(torch.int64)), TypeError, r"a_t must have a floating dtype"),
        (dict(mse_weight=torch.ones(4, dtype=torch.float64)), ValueError, r"mse_weight must hold one value"),
        (dict(hf_mse_weight=torch.ones(3, 2)), ValueError, r"hf_mse_weight must hold one value per sample"),
        (
            dict(hf_mse_weight=torch.ones(3, device="meta")),
            ValueError,
            r"hf_mse_weight must be on the device",
        ),
        (
            dict(
                x_t=S.x_t[..., :1, :],
                eps_ada=S.eps_ada[..., :1, :],
                eps_src=S.eps_src[..., :1, :],
                noise=S.noise[..., :1, :],
            ),
            ValueError,
            r"x_t must have height and width of at least 2",
        ),
    ],
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_loss_rejects_bad_tensors(backend, changes, error, pattern):
    with pytest.raises(error, match=pattern):
        _loss(backend, **changes)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(tau=-1.0), r"tau must be a finite number > 0"),
        (dict(tau=0.0), r"tau must be a finite number > 0"),
        (dict(tau=float("nan")), r"tau must be a finite number > 0"),
        (dict(reduction="avg"), r"reduction must be one of 'mean', 'batchmean', 'sum'"),
        (dict(reduction="none"), r"reduction must be one of 'mean', 'batchmean', 'sum', got 'none'"),
        (dict(w_pair=float("inf")), r"w_pair must be a finite number"),
        (dict(w_hf_mse="1"), r"w_hf_mse must be a finite number"),
        (dict(w_pair=True), r"w_pair must be a finite number"),
        (dict(w_hf_pair=-float("inf")), r"w_hf_pair must be a finite number"),
    ],
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_loss_rejects_bad_options(backend, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _loss(backend, **kwargs)
    with pytest.raises(ValueError, match=pattern):
        D.DDPMPALoss(**kwargs)


def test_the_common_loss_call_takes_the_validated_fast_path():
    """is_plain_loss_call is what keeps the public call's host cost near a native loss's (issue 23): it
    must say True for the usual call, and every call it declines still goes through the named checks."""
    from ddpm_pa_fast import _validation as V

    images = (S.eps_ada, S.eps_src, S.noise)
    scalars = (4.0, 4.0, 1.0, 1.0)
    assert V.is_plain_loss_call(S.x_t, images, (S.a_t, S.b_t, None, None), scalars)
    assert V.is_plain_loss_call(S.x_t, images, (S.a_t, S.b_t, S.a_t, S.b_t), scalars)
    # Valid, but for the named checks to accept or convert: (N, 1, 1, 1) coefficients, integer weights,
    # mixed image dtypes (promoted, as under autocast).
    declined = [
        (S.x_t, images, (S.a_t.view(3, 1, 1, 1), S.b_t, None, None), scalars),
        (S.x_t, images, (S.a_t, S.b_t, None, None), (4, 4.0, 1.0, 1.0)),
        (S.x_t, (S.eps_ada.float(), S.eps_src, S.noise), (S.a_t, S.b_t, None, None), scalars),
    ]
    for call in declined:
        assert not V.is_plain_loss_call(*call)
        x_t, images, (a_t, b_t, m, h), (w_pair, w_hf_pair, w_hf_mse, tau) = call
        out = D.ddpm_pa_loss(
            x_t, *images, a_t, b_t, w_pair, w_hf_pair, w_hf_mse, tau, mse_weight=m, hf_mse_weight=h
        )
        torch.testing.assert_close(out.loss, R.ddpm_pa_loss(*S.args()).loss, rtol=1e-5, atol=1e-7)


def test_pairwise_kl_rejects_bad_input():
    src, ada = similar_features((3, 5))
    with pytest.raises(ValueError, match="src must hold at least 2 samples"):
        D.pairwise_similarity_kl(src[:1], ada[:1])
    with pytest.raises(ValueError, match="src must have at least 2 dimensions"):
        D.pairwise_similarity_kl(src[0], ada[0])
    with pytest.raises(ValueError, match="ada must have the shape of src"):
        D.pairwise_similarity_kl(src, ada[:, :4])
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        D.pairwise_similarity_kl(src, ada, tau=-0.5)
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'batchmean', 'sum', 'none'"):
        D.pairwise_similarity_kl(src, ada, reduction="max")
    with pytest.raises(TypeError, match="src must have a floating dtype"):
        D.pairwise_similarity_kl(src.long(), ada.long())


def test_haar_functions_reject_bad_input():
    x = randn((2, 3, 8, 8))
    with pytest.raises(ValueError, match="x must be a 4-D tensor"):
        D.haar_dwt2d(x[0])
    with pytest.raises(ValueError, match="mode must be one of 'zero', 'symmetric', 'periodization'"):
        D.haar_dwt2d(x, mode="reflect")
    with pytest.raises(ValueError, match="levels must be an integer >= 1"):
        D.haar_dwt2d(x, levels=0)
    with pytest.raises(ValueError, match="x must have height and width of at least 2"):
        D.ddpm_pa_high_frequency(x[..., :1])
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        D.ddpm_pa_high_frequency(x.to(torch.int32))
    yl, yh = D.haar_dwt2d(x, 2)
    with pytest.raises(ValueError, match=r"yh\[1\] must have shape \(N, C, 3, h, w\)"):
        D.haar_idwt2d(yl, [yh[0], yh[1][:, :, :2]])
    with pytest.raises(ValueError, match="yh must be a non-empty list"):
        D.haar_idwt2d(yl, [])
    with pytest.raises(ValueError, match=r"yh\[1\] has spatial size \(4, 4\), which does not fit"):
        D.haar_idwt2d(yl, [yh[1], yh[0]])
    with pytest.raises(ValueError, match="wave must be 'haar'"):
        D.DWTForward(wave="db2")
    with pytest.raises(ValueError, match="J must be an integer >= 1"):
        D.DWTForward(J=0)
    with pytest.raises(ValueError, match=r"coeffs must be a pair \(yl, yh\)"):
        D.DWTInverse()(yl)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_loss_promotes_mixed_float_dtypes_as_under_autocast(backend):
    """Under autocast the model's eps_ada is bfloat16 while x_t, eps_src and noise stay float32: the loss
    runs in float32 and the gradient reaches eps_ada in its own dtype."""
    s = make_loss_sample((3, 3, 8, 8), dtype=torch.float32)
    eps_ada = s.eps_ada.to(torch.bfloat16).requires_grad_(True)
    out = D.ddpm_pa_loss(s.x_t, eps_ada, s.eps_src, s.noise, s.a_t, s.b_t, backend=backend)
    assert out.loss.dtype == torch.float32
    truth = R.ddpm_pa_loss(
        s.x_t.double(), eps_ada.detach().double(), s.eps_src.double(), s.noise.double(), s.a_t, s.b_t
    )
    torch.testing.assert_close(out.loss.double(), truth.loss, rtol=1e-4, atol=1e-6)
    out.loss.backward()
    assert eps_ada.grad.dtype == torch.bfloat16 and torch.isfinite(eps_ada.grad).all()


def test_the_checkout_kernels_folder_leaves_the_name_kernels_to_another_package(tmp_path):
    """From a source checkout's root the working directory is on sys.path, so `import kernels` finds the
    Triton kernels' folder first; transformers >= 5 (and through it diffusers' and peft's LoRA code)
    imports Hugging Face's `kernels` package by that name. The folder must hand the name over."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    other = tmp_path / "site" / "kernels"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("ORIGIN = 'the other package'\n")
    code = "import kernels; print(kernels.ORIGIN)"
    # -S: no site-packages, so the only other `kernels` is the one this test makes.
    command = [sys.executable, "-S", "-c", code]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    found = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "the other package"
    env.pop("PYTHONPATH")
    missing = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert missing.returncode != 0
    assert "No module named 'kernels'" in missing.stderr and "ddpm_pa_fast.kernels" in missing.stderr
