"""Trainer img/s as the code stands (src) or at HEAD (old_src), and the returned model's layout."""

import statistics
import sys

import torch

from convvae.config import ModelConfig, TrainConfig
from convvae.data.sources import load_source, make_splits
from convvae.model.vae import ConvVAE, resolve_architecture
from convvae.training.trainer import Trainer

g = torch.Generator().manual_seed(0)
big = torch.randint(0, 256, (1024, 3, 256, 256), dtype=torch.uint8, generator=g)
small = torch.from_numpy(make_splits(load_source("mnist-5k"), 0.1, 0.2, seed=0).train.images)
for shape, train, bs in [((3, 256, 256), big, 64), ((1, 28, 28), small, 256)]:
    torch.manual_seed(0)
    model = ConvVAE(resolve_architecture(ModelConfig(), shape))
    cfg = TrainConfig(epochs=6, batch_size=bs, early_stopping_patience=None, device="cuda")
    r = Trainer(model, cfg, progress=False).fit(train, train[:64])
    rates = [h.images_per_s for h in r.history[1:]]
    nchw = all(p.is_contiguous() for p in r.model.parameters())
    print(
        f"{sys.argv[1]} {shape} batch {bs}: median {statistics.median(rates):7.0f} img/s, best "
        f"{max(rates):7.0f}, val {r.history[-1].val_loss:.2f}, returned NCHW {nchw}"
    )
