"""Training speed of the ConvVAE on this machine, against the original loop and the roofline.

Run: ``.venv/bin/python speed/train_speed.py [--quick] [--device cuda] [--json out.json]``. All
figures come from one run on the real mnist-5k training split (3500 images). Other processes on
the machine make single epochs noisy (a busy second core can slow a 2-thread epoch tenfold), so
the trainer and the reference loop take turns epoch by epoch, each rate is the median ("best":
the fastest) of --epochs - 1 epochs (the first, warm-up epoch left out), and the matmul rate is
the best of many tries before and after.

- trainer img/s: ``convvae.training.trainer.Trainer`` on the ``default`` preset (uint8 batches
  sliced from
  memory, fused Adam); training loop only, validation excluded.
- reference img/s: the original project's feeding of the same model: a Dataset whose
  ``__getitem__`` goes through ``PIL.Image.fromarray`` and ``ToTensor()``, a shuffled
  ``DataLoader`` (num_workers=0), plain ``torch.optim.Adam``, contiguous tensors, same loss
  (``elbo_terms``) and the same number of images.
- speed-up: trainer img/s / reference img/s (of the medians, and of the best epochs).
- roofline img/s: this machine's matmul rate (FLOP/s; fp32 2048^2 on CPU, bf16 8192^2 with
  --device cuda) divided by the
  model's training FLOPs per image (one forward + backward counted by ``FlopCounterMode``: convs
  and matmuls only; the optimizer and elementwise work count as overhead). "% roofline" is the
  share of it reached; the goal is >= 70 % (of the median) for the ``default`` preset. The
  matmul rate is the best of all tries (before, after, and 0.3 s after every epoch pair); each
  epoch is also set against the rate measured right after it ("beside"), which a slow phase of
  the machine lowers too: the verdict uses the best rate, the stricter of the two.
- scoring img/s: ``convvae.anomaly.scoring.score_images`` (what `convvae score` and serving call) on
  the
  1,000 mnist-5k test images at the default posterior sample count, for ``excess_nll`` (the model
  alone) and ``fused`` (plus the two nearest-neighbour distances to the 3,500 training images);
  its roofline is the matmul rate over the FLOPs ``FlopCounterMode`` counts for one image's
  scoring (the encoder once, the decoder samples + 1 times, the distances).
- ``--device cuda``: both loops train on the GPU, ours under bf16 autocast (as ``Trainer`` does
  on every GPU), the original-style loop in fp32 as the original did; the roofline is then the
  GPU's bf16 matmul rate (square 8192 products). Scoring stays on the CPU, where `convvae score`
  and serving run it, against the CPU's fp32 rate.
- seconds to target: wall time (training, validation, everything) from the start of
  ``Trainer.fit`` until an epoch's validation negative ELBO (nats/image) is <= --target-val-loss,
  for the ``seed`` (272 M parameters) and ``default`` presets, both trained on the same capped
  training split (--target-cap images, so the slow seed model gets a validation check often);
  "not reached" when --seed-budget-s (or --default-budget-s) ran out first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Iterator

import torch
from PIL import Image
from roofline import cpu_model, device_name, matmul_flops, matmul_label, synchronize
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import ToTensor

from convvae.config import TrainConfig
from convvae.data.sources import load_source
from convvae.data.splits import make_splits
from convvae.model.architecture import PRESETS
from convvae.model.vae import ConvVAE, count_parameters, elbo_terms
from convvae.runtime.allocator import keep_freed_memory
from convvae.training.history import EpochRecord
from convvae.training.trainer import Trainer


def train_flops_per_image(preset: str, batch_size: int) -> float:
    """Conv and matmul FLOPs of one forward + backward, per image."""
    model = ConvVAE(PRESETS[preset])
    x = torch.rand(batch_size, 1, 28, 28)
    with FlopCounterMode(display=False) as counter:
        logits, mu, logvar = model(x)
        recon, kl = elbo_terms(logits, x, mu, logvar)
        (recon + kl).mean().backward()
    return counter.get_total_flops() / batch_size


def scoring_rates(train: torch.Tensor, val: torch.Tensor, flops_per_s: float) -> list[dict]:
    """images/s of score_images per score at the default sample count, with its roofline."""
    from convvae.anomaly.fit import fit_reference
    from convvae.anomaly.scorer import Scorer
    from convvae.anomaly.scores import ScoreSpec
    from convvae.anomaly.scoring import score_images
    from convvae.config import AnomalyConfig

    torch.manual_seed(0)
    model = ConvVAE(PRESETS["default"]).eval()
    samples = AnomalyConfig.samples  # the default: anomaly.samples
    reference = fit_reference(model, train.numpy(), val.numpy(), samples, 0)
    test = make_splits(load_source("mnist-5k"), 0.1, 0.2, seed=0).test.images
    rows = []
    for name in ("excess_nll", "fused"):
        scorer = Scorer(model, reference, ScoreSpec(name, samples, 0))  # builds the banks
        score_images(scorer, test[:64])  # warm-up
        with FlopCounterMode(display=False) as counter:
            score_images(scorer, test[:64])
        flops = counter.get_total_flops() / 64
        started = time.perf_counter()
        score_images(scorer, test)
        rate = len(test) / (time.perf_counter() - started)
        pct = 100 * rate * flops / flops_per_s
        rows.append(
            {"score": name, "samples": samples, "images_per_s": rate, "flops_per_image": flops,
             "pct_roofline": pct}
        )  # fmt: skip
    return rows


def load_splits(cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 1, 28, 28) train and validation images of mnist-5k, as the pipeline splits it."""
    splits = make_splits(load_source("mnist-5k"), 0.1, 0.2, seed=0, max_train_images=cap)
    return torch.from_numpy(splits.train.images), torch.from_numpy(splits.val.images)


class PilDataset(Dataset):
    """One image at a time through PIL and ToTensor, as the original project fed its model."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images.numpy()
        self.to_tensor = ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.to_tensor(Image.fromarray(self.images[index, 0]))


def reference_epochs(
    preset: str, train: torch.Tensor, bs: int, device: torch.device
) -> Iterator[float]:
    """Yields images/s of successive epochs of the original-style training loop."""
    torch.manual_seed(0)
    model = ConvVAE(PRESETS[preset]).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(PilDataset(train), batch_size=bs, shuffle=True, num_workers=0)
    while True:
        started = time.perf_counter()
        for x in loader:
            x = x.to(device)
            logits, mu, logvar = model(x)
            # ToTensor's output lies in [0, 1]; the original had no check that syncs a GPU.
            recon, kl = elbo_terms(logits, x, mu, logvar, pixels_checked=True)
            loss = (recon + kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)
        yield len(train) / (time.perf_counter() - started)


def epoch_rates(
    preset: str, train, val, bs: int, epochs: int, device: torch.device
) -> tuple[list, list, list]:
    """images/s of our Trainer's and the reference's epochs, taking turns epoch by epoch (so
    both see the same background load), and the matmul FLOP/s measured right after each pair
    (the roofline of that moment); the first (warm-up) epoch of each is left out."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        epochs=epochs, batch_size=bs, early_stopping_patience=None, device=device.type
    )
    reference, ref_rates, matmul_rates = reference_epochs(preset, train, bs, device), [], []

    def on_epoch(_: EpochRecord) -> None:
        ref_rates.append(next(reference))
        matmul_rates.append(matmul_flops(0.3, device))

    result = Trainer(ConvVAE(PRESETS[preset]), cfg, progress=False).fit(
        train, val, on_epoch=on_epoch
    )
    ours = [record.images_per_s for record in result.history[1:]]
    return ours, ref_rates[1:], matmul_rates[1:]


class _Stop(Exception):
    pass


def time_to_target(
    preset: str, train, val, bs: int, target: float, budget_s: float, device: torch.device
) -> dict:
    """Wall seconds of Trainer.fit until val_loss <= target, or until the budget ran out."""
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=10**6, batch_size=bs, early_stopping_patience=None, device=device.type)
    trainer = Trainer(ConvVAE(PRESETS[preset]), cfg, progress=False)
    history: list[EpochRecord] = []
    started = time.perf_counter()

    def on_epoch(record: EpochRecord) -> None:
        history.append(record)
        if record.val_loss <= target or time.perf_counter() - started > budget_s:
            raise _Stop

    with contextlib.suppress(_Stop):
        trainer.fit(train, val, on_epoch=on_epoch)
    return dict(
        preset=preset,
        parameters=count_parameters(trainer.model),
        reached=history[-1].val_loss <= target,
        seconds=time.perf_counter() - started,
        epochs=len(history),
        images_seen=len(history) * len(train),
        best_val_loss=min(r.val_loss for r in history),
        train_images_per_s=statistics.median(r.images_per_s for r in history),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke check in under a minute")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--speed-batches", help="comma-separated batch sizes of the speed runs (default: "
        "--batch-size and 256)"
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=10, help="per speed run, incl. warm-up")
    parser.add_argument("--target-val-loss", type=float, default=200.0, help="nats/image")
    parser.add_argument("--target-cap", type=int, default=1000, help="training images")
    parser.add_argument("--seed-budget-s", type=float, default=300.0)
    parser.add_argument("--default-budget-s", type=float, default=120.0)
    parser.add_argument("--skip-seed", action="store_true", help="no seed-preset run")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here; leave --device out")
    args.batches = [args.batch_size, 256]
    if args.speed_batches:
        args.batches = [int(size) for size in args.speed_batches.split(",")]
    if args.quick:
        args.epochs, args.target_cap = 2, 200
        args.seed_budget_s, args.default_budget_s = 10.0, 10.0
    return args


def speed_row(bs: int, ours: list, ref: list, matmul_beside: list, flops_per_s: float) -> dict:
    """One batch size's line of the speed table (printed): both loops against the roofline."""
    flops = train_flops_per_image("default", bs)
    roofline = flops_per_s / flops
    row = {"batch_size": bs, "flops_per_image": flops, "roofline_images_per_s": roofline}
    # Each epoch against the matmul rate of its own moment: the machine's slow phases
    # (other tenants) lower both, so this share moves less from run to run.
    beside = [100 * rate * flops / mm for rate, mm in zip(ours, matmul_beside, strict=True)]
    row["pct_roofline_beside_median"] = statistics.median(beside)
    row["matmul_flops_per_s_beside"] = matmul_beside
    lead = f"{bs:5d} {flops / 1e6:9.1f} {roofline:14.0f}"
    for loop, rates in (("trainer", ours), ("reference", ref)):
        median, best = statistics.median(rates), max(rates)
        row[loop] = {"median": median, "best": best, "epochs": rates}
        row[loop] |= {"pct_roofline": 100 * median / roofline}
        print(
            f"{lead}   {loop:9} {median:12.0f} {best:10.0f} "
            f"{100 * median / roofline:16.1f}% / {100 * best / roofline:4.1f}%"
        )
        lead = " " * len(lead)
    row["speedup"] = row["trainer"]["median"] / row["reference"]["median"]
    best_ratio = row["trainer"]["best"] / row["reference"]["best"]
    print(f"{lead}   {'speed-up':9} {row['speedup']:11.2f}x {best_ratio:9.2f}x")
    return row


def speed_section(args, device, train, val, matmul_s: float) -> tuple[list[dict], float]:
    """The two loops at each batch size against the roofline (printed); rows and roofline."""
    flops_per_s = matmul_flops(matmul_s, device)
    runs = {bs: epoch_rates("default", train, val, bs, args.epochs, device) for bs in args.batches}
    # Measured again after the runs: a busy moment at the start would lower the roofline.
    beside_rates = [rate for _, _, rates in runs.values() for rate in rates]
    flops_per_s = max(flops_per_s, matmul_flops(matmul_s, device), *beside_rates)
    print(f"{matmul_label(device)}: {flops_per_s / 1e9:.0f} GFLOP/s (best single product)")
    print(
        f"data: mnist-5k, {len(train)} training images, default preset; {args.epochs - 1} epochs "
        "per loop after a warm-up epoch, loops alternating epoch by epoch\n"
    )
    print(
        f"{'batch':>5} {'MFLOP/img':>9} {'roofline img/s':>14}   {'loop':9} {'img/s median':>12}"
        f" {'img/s best':>10} {'% roofline median / best':>25}"
    )
    speed = [speed_row(bs, *rates, flops_per_s) for bs, rates in runs.items()]
    pct = max(row["trainer"]["pct_roofline"] for row in speed)
    verdict = "reached" if pct >= 70 else "NOT reached"
    print(f"\ngoal >= 70% of roofline for the default preset: {verdict} (best median {pct:.1f}%)")
    beside = ", ".join(
        f"batch {row['batch_size']} {row['pct_roofline_beside_median']:.1f}%" for row in speed
    )
    print(f"against the matmul rate measured after each epoch instead of the best one: {beside}")
    return speed, flops_per_s


def scoring_section(train, val, cpu_flops_per_s: float) -> list[dict]:
    """`convvae score`'s rates on the CPU (printed)."""
    scoring = scoring_rates(train, val, cpu_flops_per_s)
    print(
        f"\nconvvae score (score_images on the CPU, 1,000 test images, "
        f"{scoring[0]['samples']} posterior samples; roofline fp32 "
        f"{cpu_flops_per_s / 1e9:.0f} GFLOP/s):"
    )
    for row in scoring:
        print(
            f"  {row['score']:10} {row['images_per_s']:8.0f} img/s, "
            f"{row['flops_per_image'] / 1e6:7.1f} MFLOP/img, {row['pct_roofline']:5.1f}% roofline"
        )
    return scoring


def target_section(args, device, target_train, target_val) -> list[dict]:
    """Seconds to the validation target per preset (printed)."""
    print(
        f"\nseconds to validation -ELBO <= {args.target_val_loss:g} nats/image (batch "
        f"{args.batch_size}, training split capped at {len(target_train)} images for both "
        f"presets, {len(target_val)} validation images):"
    )
    budgets = {"seed": args.seed_budget_s, "default": args.default_budget_s}
    targets = []
    for preset in ["default"] if args.skip_seed else ["seed", "default"]:
        row = time_to_target(preset, target_train, target_val, args.batch_size,
                             args.target_val_loss, budgets[preset], device)  # fmt: skip
        targets.append(row)
        seconds = row["seconds"]
        outcome = f"{seconds:.1f} s" if row["reached"] else f"not reached in {seconds:.0f} s"
        print(
            f"  {preset:8} {row['parameters'] / 1e6:6.1f} M params: {outcome:>20}, "
            f"{row['epochs']} epochs, {row['images_seen']} images, best val "
            f"{row['best_val_loss']:.1f}, {row['train_images_per_s']:.0f} img/s"
        )
    return targets


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    keep_freed_memory()  # as `convvae score` and the stages do (convvae.runtime.allocator)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU: {cpu_model()}")
    if device.type == "cuda":
        print(f"training on {device_name(device)}, ours under bf16 autocast")
    matmul_s = 1.0 if args.quick else 4.0
    cpu = torch.device("cpu")
    # Scoring's roofline (the CPU's), before and after the runs as for training's; in CPU mode
    # it is training's own rate, measured below.
    cpu_rate_before = matmul_flops(matmul_s, cpu) if device != cpu else None
    train, val = load_splits()
    speed, flops_per_s = speed_section(args, device, train, val, matmul_s)
    cpu_flops_per_s = (
        flops_per_s
        if cpu_rate_before is None
        else max(cpu_rate_before, matmul_flops(matmul_s, cpu))
    )
    scoring = scoring_section(train, val, cpu_flops_per_s)
    target_train, target_val = load_splits(args.target_cap)
    targets = target_section(args, device, target_train, target_val)
    if args.json:
        figures = {"torch": torch.__version__, "threads": threads, "cpu": cpu_model()}
        figures |= {"device": device_name(device), "matmul": matmul_label(device)}
        figures |= {"matmul_flops_per_s": flops_per_s, "speed": speed, "scoring": scoring}
        figures |= {"scoring_matmul_flops_per_s": cpu_flops_per_s}
        figures |= {"target_val_loss": args.target_val_loss, "target_cap": len(target_train)}
        figures |= {"time_to_target": targets}
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
        print(f"\nfigures written to {args.json}")


if __name__ == "__main__":
    main()
