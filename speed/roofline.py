"""The machine's compute roofline for the speed scripts: the best rate of one large matrix
product (fp32 on a CPU, bf16 on a GPU), and what the machine is called."""

from __future__ import annotations

import platform
import time

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def matmul_kind(device: torch.device) -> tuple[int, torch.dtype]:
    """The roofline's product: fp32 2048^2 on CPU; on a GPU bf16 8192^2, since the trainer runs
    under bf16 autocast there and a smaller product does not fill the chip."""
    return (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)


def matmul_label(device: torch.device) -> str:
    n, dtype = matmul_kind(device)
    return f"{'bf16' if dtype == torch.bfloat16 else 'fp32'} matmul {n}^2"


def synchronize(device: torch.device) -> None:
    """Waits for the GPU's queued work, so a host clock times it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(seconds: float, device: torch.device, at_least: int = 8) -> float:
    """Best FLOP/s of single square matmuls (``matmul_kind``), timed over and over for
    ``seconds`` (and at least ``at_least`` times: a best of very few is biased low)."""
    n, dtype = matmul_kind(device)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    synchronize(device)
    best, tries, stop = 0.0, 0, time.perf_counter() + seconds
    while time.perf_counter() < stop or tries < at_least:
        tries += 1
        started = time.perf_counter()
        a @ b
        synchronize(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - started))
    return best
