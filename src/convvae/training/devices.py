"""Where training runs: the device, and this process's place among data-parallel workers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from convvae.config import TrainConfig
from convvae.errors import ConfigError


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among data-parallel workers (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, outputs and tracking; the others only train."""
        return self.rank == 0


def init_distributed(cfg: TrainConfig) -> ProcessGroup:
    """Join the process group that ``torchrun`` describes in the environment.

    Distributed when torchrun started several processes (WORLD_SIZE > 1) or train.distributed
    is true; NCCL on CUDA, gloo on CPU. Without torchrun, train.distributed is a ConfigError.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not cfg.distributed:
        return ProcessGroup()
    if "RANK" not in os.environ:
        raise ConfigError(
            "train.distributed is true but this process was not started by torchrun; run "
            "`torchrun --nproc-per-node N -m pipeline.train` or set train.distributed: false"
        )
    group = ProcessGroup(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))
    if not torch.distributed.is_initialized():
        use_nccl = select_device(cfg.device).type == "cuda"
        if use_nccl:
            torch.cuda.set_device(group.local_rank)
        torch.distributed.init_process_group("nccl" if use_nccl else "gloo")
    return group


def select_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is visible; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is mps but MPS is not available; use auto or cpu")
    return torch.device(name)


def prefers_channels_last(device: torch.device, image_size: tuple[int, int]) -> bool:
    """Whether training keeps the model's weights channels-last (NHWC), the layout cuDNN's
    tensor-core convolutions are built around: on CUDA for images of 64 pixels a side or more.
    On an H200 a 3x256x256 model trained 1.5-1.7x faster so; at 28x28 the host sets the pace
    and the layout copies cost 0-16% (docs/speed/h200). Sizes between were not measured; 64 is
    the first folder preset's side."""
    return device.type == "cuda" and min(image_size) >= 64
