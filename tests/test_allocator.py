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


# A request whose scoring peaks at 400 MB, freed before the answer, through `convvae serve`'s
# request limits: prints the resident MB before, right after the app answered and after the
# middleware returned, for a body above and below the size that triggers the give-back.
SERVER_PROBE = """
import asyncio, resource, sys, torch
from convvae.runtime.allocator import keep_freed_memory
from convvae.serving import RequestLimits

def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20

seen = {}
async def app(scope, receive, send):
    await receive()
    peak = [torch.ones(10_000_000) for _ in range(10)]
    del peak
    seen["answered"] = resident_mb()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})

async def request(body):
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    async def send(message):
        pass
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    scope = {"type": "http", "method": "POST", "headers": headers}
    await RequestLimits(app, max_bytes=1 << 20, trim_above=1000)(scope, receive, send)

keep_freed_memory()
asyncio.run(request(b"[" + b"0," * int(sys.argv[1]) + b"0]"))
print(seen["answered"], resident_mb())
"""


@pytest.mark.parametrize("values", [10, 10_000], ids=["small", "large"])
def test_serving_gives_memory_back_after_a_large_request(values: int) -> None:
    # keep_freed_memory holds a peak's pages for speed; after a large request the server
    # returns them (malloc_trim), after a small one it keeps them.
    out = subprocess.run(
        [sys.executable, "-c", SERVER_PROBE, str(values)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    answered, after = map(float, out.stdout.split())
    assert answered > 350  # the freed 400 MB peak is still resident when the app answers
    if values > 1000:
        assert after < answered - 300
    else:
        assert after > answered - 50
