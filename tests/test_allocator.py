"""The allocator setting (convvae.runtime.allocator): large tensors come from the heap, not from a
fresh
mmap each time; CONVVAE_MALLOC=system keeps glibc's defaults. Each case runs in its own
process, since the setting is process-wide."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's"
)

# Allocates and frees a 200 MB tensor, then prints whether the setting applied and the bytes
# glibc still holds in mmapped blocks while a second one of the same size is alive.
PROBE = """
import ctypes, torch
from convvae.runtime.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory()
first = torch.ones(50_000_000)
del first
second = torch.ones(50_000_000)
print(applied, libc.mallinfo2().hblkhd, libc.mallinfo2().arena)
"""


def probe(env_value: str | None) -> tuple[bool, int, int]:
    env = {k: v for k, v in os.environ.items() if k != "CONVVAE_MALLOC"}
    if env_value is not None:
        env["CONVVAE_MALLOC"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


def test_large_tensors_come_from_the_heap_and_the_opt_out_keeps_mmap():
    applied, mmapped, heap = probe(None)
    assert applied and mmapped < 100_000_000 and heap >= 200_000_000  # torch import: a few MB
    applied, mmapped, heap = probe("system")
    assert not applied and mmapped >= 200_000_000 and heap < 200_000_000
