"""Data-parallel training: 2 gloo processes on CPU follow the single-process trajectory."""

import dataclasses

import pytest
import torch
import torch.multiprocessing as mp

from convvae.errors import ConfigError
from convvae.training.devices import init_distributed
from convvae.training.trainer import Trainer
from tests.conftest import quick_train_config, tiny_model
from tests.e2e.servers import free_port

# Two processes each average half of every global batch's gradients: only float rounding in
# the all-reduce separates them from one process, so 8 steps stay within these bounds.
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-4


def _worker(rank, world_size, port, train_images, val_images, result_path):
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    cfg = quick_train_config(epochs=2)
    group = init_distributed(cfg)
    result = Trainer(tiny_model(), cfg, progress=False, group=group).fit(train_images, val_images)
    if group.is_main:
        history = [dataclasses.asdict(r) for r in result.history]
        torch.save({"state": result.model.state_dict(), "history": history}, result_path)
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one_process(train_images, val_images, tmp_path):
    result_path = tmp_path / "ddp.pt"
    mp.spawn(
        _worker,
        args=(2, free_port(), train_images, val_images, str(result_path)),
        nprocs=2,
        join=True,
    )
    parallel = torch.load(result_path, weights_only=True)
    single = Trainer(tiny_model(), quick_train_config(epochs=2), progress=False).fit(
        train_images, val_images
    )
    assert len(parallel["history"]) == len(single.history) == 2
    for ddp_epoch, one_epoch in zip(parallel["history"], single.history, strict=True):
        for key in ("train_loss", "val_loss"):
            assert ddp_epoch[key] == pytest.approx(getattr(one_epoch, key), rel=LOSS_RTOL)
    for name, weights in single.model.state_dict().items():
        torch.testing.assert_close(parallel["state"][name], weights, atol=WEIGHT_ATOL, rtol=0)


def test_distributed_without_torchrun_is_a_config_error(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        init_distributed(quick_train_config(distributed=True))
    assert init_distributed(quick_train_config()).world_size == 1
