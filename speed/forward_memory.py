"""Peak memory of the forward passes outside training (the validation loss during training,
reconstruction, decoding codes, imputation) against the number of images: batches bounded by
pixels (convvae.data.images.images_per_batch, the default) against all images in one batch
(the bound lifted, as before 2026-12-07). The folder default model, untrained, at a given size.
Each case runs in its own process; its peak resident memory (ru_maxrss) less the resident
memory after the model and images are in place is what the pass added.

    .venv/bin/python speed/forward_memory.py 3:256:256 160 512
    # CHANNELS:HEIGHT:WIDTH, then numbers of images
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASE = """
import dataclasses, json, resource, sys, torch
import convvae.data.images as pixels
from convvae.config import DEFAULT_LIKELIHOOD, ModelConfig, TrainConfig
from convvae.model.architecture import resolve_architecture
from convvae.model.vae import ConvVAE
from convvae.training.trainer import Trainer
from convvae.uses.compress import decode, encode
from convvae.uses.evaluation import reconstruct
from convvae.uses.impute import impute, make_mask

shape, n, use, bounded = json.loads(sys.argv[1])
if not bounded:
    pixels.FORWARD_BATCH_VALUES = 1 << 62
torch.manual_seed(0)
cfg = ModelConfig(likelihood=DEFAULT_LIKELIHOOD["folder"])
model = ConvVAE(resolve_architecture(cfg, tuple(shape)))
images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
trainer = Trainer(model, TrainConfig(device="cpu"), progress=False)
codes = encode(model, images[:1], "float32")
codes = dataclasses.replace(codes, values=codes.values.repeat(n, 0))
missing = make_mask("center", n, tuple(shape))
def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20
before = rss_mb()
run = {
    "validation loss": lambda: trainer.evaluate_loss(images),
    "reconstruct": lambda: reconstruct(model, images),
    "decode codes": lambda: decode(model, codes),
    "impute": lambda: impute(model, images, missing, images[0].float() / 255, 5),
}[use]
run()
print(json.dumps({"added_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before,
                  "batch": pixels.images_per_batch(tuple(shape)) if bounded else n}))
"""

USES = ("validation loss", "reconstruct", "decode codes", "impute")


def one_case(shape: list[int], n: int, use: str, bounded: bool) -> dict:
    """The MB a use's pass added, in a fresh process, and its batch size."""
    command = [sys.executable, "-c", CASE, json.dumps([shape, n, use, bounded])]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", help="CHANNELS:HEIGHT:WIDTH, e.g. 3:256:256")
    parser.add_argument("images", nargs="+", type=int, help="numbers of images")
    args = parser.parse_args()
    shape = [int(part) for part in args.shape.split(":")]
    print("| use | images | batch (bounded) | added MB, bounded | added MB, one batch |")
    print("|---|---:|---:|---:|---:|")
    for use in USES:
        for n in args.images:
            found = [one_case(shape, n, use, bounded) for bounded in (True, False)]
            print(
                f"| {use} | {n} | {found[0]['batch']} | {found[0]['added_mb']:.0f} | "
                f"{found[1]['added_mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
