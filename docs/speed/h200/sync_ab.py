"""Trainer img/s for the 3x256x256 default architecture on random uint8 images (GPU-bound).
Run twice per round, once with PYTHONPATH at the code before the change (old) and once after
(new); the argument labels the line. Wrote sync_ab_256x256.log."""

import statistics
import sys

import torch

from convvae.config import ModelConfig, TrainConfig
from convvae.model.vae import ConvVAE, resolve_architecture
from convvae.training.trainer import Trainer

arch = resolve_architecture(ModelConfig(), (3, 256, 256))
g = torch.Generator().manual_seed(0)
train = torch.randint(0, 256, (1024, 3, 256, 256), dtype=torch.uint8, generator=g)
val = train[:64]
for bs in (32, 128):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=6, batch_size=bs, early_stopping_patience=None, device="cuda")
    r = Trainer(ConvVAE(arch), cfg, progress=False).fit(train, val)
    rates = [h.images_per_s for h in r.history[1:]]
    print(
        f"{sys.argv[1]} 3x256x256 batch {bs}: median {statistics.median(rates):.0f} img/s, "
        f"best {max(rates):.0f}"
    )
