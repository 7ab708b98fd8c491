"""Two CPU processes with the gloo backend (the path torchrun takes) end with identical weights."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("diffusers")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, config, out_dir):
    # The environment torchrun sets; Trainer initialises the process group from it.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        DDPM_PA_DIST_BACKEND="gloo",
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from ddpm_pa_fast.train.trainer import Trainer

    try:
        trainer = Trainer(config)
        assert isinstance(trainer.adapted_forward, torch.nn.parallel.DistributedDataParallel)
        assert not isinstance(trainer.source_forward, torch.nn.parallel.DistributedDataParallel)
        trainer.train()
        torch.save(
            {
                "params": {name: p.detach() for name, p in trainer.adapted.named_parameters()},
                "trained": {name for name, p in trainer.adapted.named_parameters() if p.requires_grad},
                "first_batch": trainer.batches.state_dict()["order"],
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("lora_rank", [None, 2], ids=["full", "lora"])
def test_two_gloo_ranks_hold_identical_weights(tmp_path, lora_rank):
    from tests.test_train_common import tiny_config

    config = tiny_config(tmp_path, steps=3, batch_size=3, checkpoint_every=3, lora_rank=lora_rank)
    mp.spawn(_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert rank0["params"].keys() == rank1["params"].keys()
    assert all(torch.equal(rank0["params"][name], rank1["params"][name]) for name in rank0["params"])
    source = [p for p in __import__("diffusers").UNet2DModel.from_pretrained(config.model_dir).parameters()]
    trained = [p for name, p in rank0["params"].items() if name in rank0["trained"]]
    base = [p for name, p in rank0["params"].items() if name not in rank0["trained"]]
    if lora_rank is None:
        assert base == [] and any(not torch.equal(a, b) for a, b in zip(trained, source, strict=True))
    else:
        # The base weights stay the source's; the adapters trained (LoRA's B starts at zero).
        assert all(torch.equal(a, b) for a, b in zip(base, source, strict=True))
        assert rank0["trained"] and all(".lora_" in name for name in rank0["trained"])
        lora_b = [p for name, p in rank0["params"].items() if ".lora_B." in name]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
    from ddpm_pa_fast.train.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "out" / "checkpoints")
    assert len(state["rng"]) == 2
