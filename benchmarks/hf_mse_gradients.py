"""Why DDPM-PA as published makes textures: the gradient of each loss term across noise levels.

    python -m benchmarks.hf_mse_gradients            # writes benchmarks/results/fewshot/hf_mse_gradients.md

At step 0 (the bundled source model, the 8 first validation shots, one t for the whole batch, its noise
fixed by a seed), the L2 norm over the UNet's parameters of the gradient of each term of the loss alone:
the noise MSE, and the HF-MSE term under each weighting of ddpm_pa_fast.hf_mse_weights ("x0" is the
authors' formulation). The pair terms are left out: at step 0 the adapted model is the source, so their
gradient is 0. The x0-space HF-MSE equals b_t^2 mean HF(eps_ada - eps)^2 (docs/ddpm_pa_spec.md), so its
gradient grows with b_t^2 = 1/SNR_t unless the weighting undoes it. A second batch (other noise, same t)
gives the cosine between the two HF-MSE gradients: near 1 when the term says something consistent at
that noise level, near 0 (or below) when its gradient is noise.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "fewshot" / "hf_mse_gradients.md"
TIMESTEPS = (100, 250, 500, 700, 900, 990)
BATCH = 8


def term_gradients(unet, scheduler, x0, t: int, seed: int) -> dict[str, torch.Tensor]:
    """The flattened gradient of each term at timestep t, for one draw of the noise."""
    from ddpm_pa_fast import HF_MSE_WEIGHTINGS, ddpm_pa_loss, hf_mse_weights, loss_coefficients

    timesteps = torch.full((len(x0),), t, dtype=torch.long)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x_t = scheduler.add_noise(x0, noise, timesteps)
    a_t, b_t, target = loss_coefficients(scheduler, x0, noise, timesteps)
    with torch.no_grad():
        pred_src = unet(x_t, timesteps).sample
    params = [p for p in unet.parameters() if p.requires_grad]
    pred = unet(x_t, timesteps).sample
    terms = {"noise MSE": None, **{f"HF-MSE ({w})": w for w in HF_MSE_WEIGHTINGS}}
    grads = {}
    for name, weighting in terms.items():
        weight = None if weighting is None else hf_mse_weights(scheduler, timesteps, weighting)
        out = ddpm_pa_loss(x_t, pred, pred_src, target, a_t, b_t, hf_mse_weight=weight)
        term = out.mse if weighting is None else out.hf_mse
        grads[name] = torch.cat([g.flatten() for g in torch.autograd.grad(term, params, retain_graph=True)])
    return grads


def main(argv=None) -> None:
    from ddpm_pa_fast import prediction
    from ddpm_pa_fast.train import fashion
    from ddpm_pa_fast.train.data import load_images
    from ddpm_pa_fast.train.sampling import load_model_folder

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    unet, scheduler = load_model_folder(fashion.SOURCE_MODEL_DIR)
    unet.eval()
    x0 = load_images(fashion.shots_dir("validation"), channels=1, size=fashion.IMAGE_SIZE)[:BATCH]
    _, b = prediction.coefficient_tables(scheduler)
    rows = []
    for t in TIMESTEPS:
        first, second = (
            term_gradients(unet, scheduler, x0, t, seed=1),
            term_gradients(unet, scheduler, x0, t, seed=2),
        )
        cosine = torch.nn.functional.cosine_similarity(first["HF-MSE (x0)"], second["HF-MSE (x0)"], dim=0)
        rows.append((t, b[t].item(), {k: v.norm().item() for k, v in first.items()}, cosine.item()))
        print(t, rows[-1][2], f"cosine {cosine.item():.2f}", flush=True)
    names = list(rows[0][2])
    lines = [
        "# Gradient norm of each loss term at step 0, by noise level",
        "",
        f"`python -m benchmarks.hf_mse_gradients` ({platform.machine()}, torch {torch.__version__}): the "
        f"bundled source model, the first {BATCH} validation shots (sandals), one t for the batch; L2 norm "
        "over the UNet's parameters of the gradient of each term alone (weight 1 in the loss). Cosine: "
        "between the x0-space HF-MSE gradients of two batches with independent noise at the same t.",
        "",
        "| t | b_t | " + " | ".join(names) + " | cosine of HF-MSE (x0) between batches |",
        "|" + " --- |" * (3 + len(names)),
    ]
    for t, b_t, norms, cosine in rows:
        lines.append(
            f"| {t} | {b_t:.2f} | " + " | ".join(f"{norms[n]:.3g}" for n in names) + f" | {cosine:.2f} |"
        )
    abar = prediction.alphas_cumprod_float64(scheduler)
    b2 = 1.0 / abar - 1.0
    lines += [
        "",
        f"b_t^2 at t = 999: {b2[-1].item():,.0f}; mean over t of b_t^2: {b2.mean().item():,.0f}, "
        f"{(b2[751:].sum() / b2.sum()).item():.0%} of it from t > 750.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
