"""Trainer img/s on CUDA: the model's weights NCHW (as before) vs channels-last (cuDNN's NHWC),
set by hand before the Trainer existed to do it. Wrote channels_last_ab.log."""

import statistics

import torch

from convvae.config import ModelConfig, TrainConfig
from convvae.data.sources import load_source, make_splits
from convvae.model.vae import ConvVAE, resolve_architecture
from convvae.training.trainer import Trainer

g = torch.Generator().manual_seed(0)
big = torch.randint(0, 256, (1024, 3, 256, 256), dtype=torch.uint8, generator=g)
s = make_splits(load_source("mnist-5k"), 0.1, 0.2, seed=0)
small = torch.from_numpy(s.train.images)
cases = [((3, 256, 256), big, 64), ((1, 28, 28), small, 256)]
for _round in range(2):
    for shape, train, bs in cases:
        for layout in ("nchw", "channels_last"):
            torch.manual_seed(0)
            model = ConvVAE(resolve_architecture(ModelConfig(), shape))
            if layout == "channels_last":
                model = model.to(memory_format=torch.channels_last)
            cfg = TrainConfig(epochs=6, batch_size=bs, early_stopping_patience=None, device="cuda")
            r = Trainer(model, cfg, progress=False).fit(train, train[:64])
            rates = [h.images_per_s for h in r.history[1:]]
            print(
                f"{shape} batch {bs} {layout:13}: median {statistics.median(rates):8.0f} img/s, "
                f"best {max(rates):8.0f}, last train loss {r.history[-1].train_loss:.2f}"
            )
