"""One DDPM-PA trainer step per precision on a tiny diffusers model (tests/test_train_common.py's):
the GPU check's proof that the trainer runs on CUDA with fp16 (autocast + GradScaler) and bf16.

    python3 scripts/gpu_check/train_step.py --device cuda --backends cuda triton --json OUT.json
    python3 scripts/gpu_check/train_step.py --device cpu --backends cpu           # the rehearsal

Each (backend, precision) runs ddpm_pa_fast.train.trainer.Trainer for --steps steps (default 1) and
must give finite loss terms. Needs diffusers; prints one line per run and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
import traceback

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", nargs="+", default=["auto"])
    parser.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from ddpm_pa_fast.train.trainer import Trainer
    from tests.test_train_common import tiny_config

    results, failed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            for precision in args.precisions:
                run_dir = pathlib.Path(tmp) / f"{backend}-{precision}"
                run_dir.mkdir()
                config = tiny_config(run_dir, device=args.device, backend=backend, precision=precision,
                                     steps=args.steps)
                start = time.perf_counter()
                try:
                    trainer = Trainer(config)
                    summary = trainer.train()
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    terms = summary["final_terms"]
                    ok = bool(terms) and all(v == v and abs(v) != float("inf") for v in terms.values())
                    result = {"backend": backend, "loss_backend": summary["loss_backend"],
                              "precision": precision, "ok": ok, "terms": terms,
                              "seconds": round(time.perf_counter() - start, 2)}
                except Exception as error:  # every run is attempted; the exit code says if any failed
                    traceback.print_exc()
                    result = {"backend": backend, "precision": precision, "ok": False,
                              "error": f"{type(error).__name__}: {error}",
                              "seconds": round(time.perf_counter() - start, 2)}
                failed += not result["ok"]
                results.append(result)
                shown = result.get("terms") or result.get("error")
                print(f"{'ok  ' if result['ok'] else 'FAIL'} train step {args.device} backend={backend} "
                      f"({result.get('loss_backend', '?')}) precision={precision}: {shown} "
                      f"[{result['seconds']} s]", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(f"train_step: {len(results) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
