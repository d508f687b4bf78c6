"""Where a training step's time goes on a GPU: the GPU's kernel time against the wall time.

Run (on a machine with CUDA): ``python speed/gpu_profile.py``. For each batch size, the
``Trainer`` of the default preset (bf16 autocast, fused Adam) is warmed up for two epochs, then
one pass over the 3,500 mnist-5k training images is timed without the profiler and once more
under ``torch.profiler``. Printed per step: the wall time, the GPU's busy time (its CUDA events:
kernels, copies and memsets, as the profiler's own table totals them), that time's share of the
wall, and the ``cudaLaunchKernel`` / ``cuLaunchKernel`` calls (launches through other entry
points, such as cuBLASLt's ``cudaLaunchKernelExC``, are not counted). A GPU busy a small share
of the time waits on the host (Python and the launches). It calls ``Trainer._train_pass``
directly, skipping ``fit``'s input check (the images are uint8, in range by construction).
"""

from __future__ import annotations

import math
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from convvae.config import TrainConfig
from convvae.data.sources import load_source
from convvae.data.splits import make_splits
from convvae.model.architecture import PRESETS
from convvae.model.vae import ConvVAE
from convvae.training.trainer import Trainer


def timed_pass(trainer: Trainer, images: torch.Tensor) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    trainer._train_pass(1, images)
    torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_profile.py: no CUDA device is visible here")
    splits = make_splits(load_source("mnist-5k"), 0.1, 0.2, seed=0)
    train, val = torch.from_numpy(splits.train.images), torch.from_numpy(splits.val.images)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}, default preset")
    for batch_size in (128, 256, 1024):
        torch.manual_seed(0)
        cfg = TrainConfig(
            epochs=2, batch_size=batch_size, early_stopping_patience=None, device="cuda"
        )
        trainer = Trainer(ConvVAE(PRESETS["default"]), cfg, progress=False)
        trainer.fit(train, val)  # warm-up: cuDNN's algorithm search, allocations
        on_gpu = train.cuda()
        steps = math.ceil(len(train) / batch_size)
        wall = min(timed_pass(trainer, on_gpu) for _ in range(3))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            profiled_wall = timed_pass(trainer, on_gpu)
        events = prof.key_averages()
        kernel_s = 1e-6 * sum(
            e.self_device_time_total
            for e in events
            if e.device_type == DeviceType.CUDA and not e.is_user_annotation
        )
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
        print(
            f"batch {batch_size:4d}: {steps:2d} steps; wall {1e3 * wall / steps:.2f} ms/step "
            f"({len(train) / wall:,.0f} img/s; {1e3 * profiled_wall / steps:.2f} profiled); "
            f"GPU kernels {1e3 * kernel_s / steps:.2f} ms/step, busy {100 * kernel_s / wall:.0f}% "
            f"of the unprofiled wall; {launches / steps:.0f} kernel launches/step"
        )
        if batch_size == 256:
            print(events.table(sort_by="self_device_time_total", row_limit=12))


if __name__ == "__main__":
    main()
