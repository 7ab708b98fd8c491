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
        assert not isinstance(trainer.source, torch.nn.parallel.DistributedDataParallel)
        trainer.train()
        torch.save(
            {
                "params": [p.detach() for p in trainer.adapted.parameters()],
                "first_batch": trainer.batches.state_dict()["order"],
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    from tests.test_train_common import tiny_config

    config = tiny_config(tmp_path, steps=3, batch_size=3, checkpoint_every=3)
    mp.spawn(_worker, args=(2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(a, b) for a, b in zip(rank0["params"], rank1["params"], strict=True))
    source = [p for p in __import__("diffusers").UNet2DModel.from_pretrained(config.model_dir).parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(rank0["params"], source, strict=True))
    from ddpm_pa_fast.train.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "out" / "checkpoints")
    assert len(state["rng"]) == 2
