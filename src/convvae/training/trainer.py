"""The trainer: batches sliced from an in-memory uint8 tensor, checkpoints, resume, early stop.

Reproducible on CPU: the shuffle order and the reparameterisation noise come from generators
whose states are saved in every checkpoint, so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from convvae.anomaly.scores import fit_reference
from convvae.anomaly.thresholds import selection_and_calibration
from convvae.config import Params, TrainConfig
from convvae.data.images import check_pixels, to_unit_interval
from convvae.data.sources import Splits
from convvae.errors import CheckpointError, TrainingDivergedError
from convvae.model.vae import ConvVAE, count_parameters, elbo_terms, resolve_architecture
from convvae.runtime.files import atomic_path
from convvae.runtime.progress import live_bar
from convvae.training.checkpoint import changed_keys, load_checkpoint, save_checkpoint
from convvae.training.devices import ProcessGroup, prefers_channels_last, select_device


@dataclass(frozen=True)
class EpochRecord:
    """Mean per-image losses (nats) of one epoch; ``beta`` is the KL weight used in training."""

    epoch: int
    train_loss: float
    train_recon: float
    train_kl: float
    val_loss: float
    val_recon: float
    val_kl: float
    beta: float
    lr: float
    images_per_s: float
    seconds: float


@dataclass
class TrainResult:
    """The best model (by validation loss) and the history that led to it."""

    model: ConvVAE
    history: list[EpochRecord]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from_epoch: int | None


class Trainer:
    """Trains one ConvVAE on uint8 image tensors of shape (N, C, H, W)."""

    def __init__(
        self,
        model: ConvVAE,
        cfg: TrainConfig,
        beta: float = 1.0,
        checkpoint_path: str | Path | None = None,
        progress: bool = True,
        fingerprint: dict | None = None,
        log: Callable[[str], None] = print,
        group: ProcessGroup | None = None,
    ) -> None:
        """``fingerprint`` identifies the run (e.g. data hash, architecture): a checkpoint made
        under another fingerprint or other train params is not resumed but started afresh.
        With a ``group`` of several processes, each trains on its shard of every global batch
        (train.batch_size images in all) under DistributedDataParallel; rank 0 alone writes."""
        self.cfg = cfg
        self.fingerprint = fingerprint or {}
        self.log = log
        self.beta = beta
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.progress = progress
        self.group = group or ProcessGroup()
        self.device = select_device(cfg.device)
        if self.device.type == "cuda" and self.group.world_size > 1:
            self.device = torch.device("cuda", self.group.local_rank)
        self.model = model.to(self.device)
        if prefers_channels_last(self.device, model.arch.image_size):
            self.model.to(memory_format=torch.channels_last)
        # Gradients are averaged across processes; the forward pass goes through the wrapper.
        self.parallel_model = (
            torch.nn.parallel.DistributedDataParallel(model)
            if self.group.world_size > 1
            else self.model
        )
        # bf16 autocast where the hardware has fast bf16 (GPUs); fp32 elsewhere.
        self.autocast = self.device.type in ("cuda", "mps")
        optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_cls(
            self.model.parameters(),
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
            if cfg.lr_schedule == "cosine"
            else None
        )
        self.shuffle_generator = torch.Generator().manual_seed(cfg.seed)
        self.noise_generator = torch.Generator(self.device).manual_seed(cfg.seed + 1)
        self.history: list[EpochRecord] = []
        self.best_state = copy.deepcopy(self.model.state_dict())
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.epochs_without_improvement = 0

    def fit(
        self,
        train_images: torch.Tensor,
        val_images: torch.Tensor,
        on_epoch: Callable[[EpochRecord], None] | None = None,
    ) -> TrainResult:
        """Train until ``cfg.epochs`` or early stopping; resume from the checkpoint if present.

        ``on_epoch`` is called after every epoch (for tracking); the result holds the best model.
        """
        torch.manual_seed(self.cfg.seed)
        resumed_from = self._resume()
        train_images = train_images.to(self.device)
        val_images = val_images.to(self.device)
        if train_images.dtype != torch.uint8:  # uint8 is in range by construction
            check_pixels(train_images)  # once here, not at every step (elbo_terms)
        patience = self.cfg.early_stopping_patience
        stopped_early = patience is not None and self.epochs_without_improvement >= patience
        for epoch in range(len(self.history) + 1, self.cfg.epochs + 1):
            if stopped_early:
                break
            record = self._run_epoch(epoch, train_images, val_images)
            self.history.append(record)
            if record.val_loss < self.best_val_loss:
                self.best_val_loss, self.best_epoch = record.val_loss, epoch
                self.best_state = copy.deepcopy(self.model.state_dict())
                self.epochs_without_improvement = 0
            else:
                self.epochs_without_improvement += 1
            self._save_checkpoint()
            if on_epoch is not None:
                on_epoch(record)
            stopped_early = patience is not None and self.epochs_without_improvement >= patience
        # NCHW, whatever training used: CPU scoring and export were tuned and measured so.
        best = copy.deepcopy(self.model).to("cpu", memory_format=torch.contiguous_format)
        best.load_state_dict(self.best_state)
        return TrainResult(
            best, self.history, self.best_epoch, self.best_val_loss, stopped_early, resumed_from
        )

    def _kl_weight(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """beta, ramped linearly over the first ``kl_warmup_epochs`` epochs (per step)."""
        if self.cfg.kl_warmup_epochs == 0:
            return self.beta
        progress = (epoch - 1 + step / steps_per_epoch) / self.cfg.kl_warmup_epochs
        return self.beta * min(1.0, progress)

    def _run_epoch(
        self, epoch: int, train_images: torch.Tensor, val_images: torch.Tensor
    ) -> EpochRecord:
        started = time.perf_counter()
        sums, beta = self._train_pass(epoch, train_images)
        n = len(train_images)
        seconds = time.perf_counter() - started
        train_loss, train_recon, train_kl = (sums / n).tolist()
        val_recon, val_kl = self.evaluate_loss(val_images)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            train_recon=train_recon,
            train_kl=train_kl,
            val_loss=val_recon + self.beta * val_kl,
            val_recon=val_recon,
            val_kl=val_kl,
            beta=beta,
            lr=lr,
            images_per_s=n / seconds,
            seconds=seconds,
        )
        if not math.isfinite(record.val_loss):
            self._diverged(f"validation loss is {record.val_loss} after epoch {epoch}")
        if self.progress and self.group.is_main:
            self.log(
                f"epoch {epoch}/{self.cfg.epochs}: train {train_loss:.2f}, "
                f"val {record.val_loss:.2f} nats/image, {record.images_per_s:.0f} img/s"
            )
        return record

    def _train_pass(self, epoch: int, train_images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One pass over the shuffled training images; returns the summed (loss, recon, kl)
        over all images of all processes, and the KL weight of the last step."""
        self.parallel_model.train()
        n, batch_size = len(train_images), self.cfg.batch_size
        rank, world = self.group.rank, self.group.world_size
        steps = math.ceil(n / batch_size)
        # One gather per epoch; every batch is then a contiguous slice of uint8 memory.
        order = torch.randperm(n, generator=self.shuffle_generator).to(self.device)
        shuffled = train_images[order]
        sums = torch.zeros(3, device=self.device)  # loss, recon, kl, summed over images
        started = time.perf_counter()
        # On a terminal only; logs get the one line per epoch below.
        bar = live_bar(n, f"epoch {epoch}/{self.cfg.epochs}", self.progress and self.group.is_main)
        beta = self.beta
        for step in range(steps):
            batch = shuffled[step * batch_size : (step + 1) * batch_size]
            # Every process draws the whole batch's noise and keeps its shard's rows: N processes
            # then follow the trajectory of one process with the same global batch.
            eps = torch.randn(
                (len(batch), self.model.arch.latent_dim),
                device=self.device,
                generator=self.noise_generator,
            )
            low, high = len(batch) * rank // world, len(batch) * (rank + 1) // world
            x = to_unit_interval(batch[low:high])
            beta = self._kl_weight(epoch, step, steps)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                logits, mu, logvar = self.parallel_model(x, eps=eps[low:high])
            recon, kl = elbo_terms(
                logits, x, mu, logvar, self.model.arch.likelihood, pixels_checked=True
            )
            per_image = recon + beta * kl
            # The mean over the global batch; DDP averages gradients over processes, hence world.
            loss = per_image.sum() * (world / len(batch))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
            self.optimizer.step()
            sums += torch.stack([per_image.detach().sum(), recon.detach().sum(), kl.detach().sum()])
            seen = min((step + 1) * batch_size, n)
            bar.update(len(batch))
            # Synchronise rarely on GPUs; on CPU this check is free.
            if self.device.type == "cpu" or step % 50 == 0 or step == steps - 1:
                self._check_finite(sums[0], epoch, step)
                bar.set_postfix(
                    loss=f"{sums[0].item() * world / seen:.2f}",
                    img_s=f"{seen / (time.perf_counter() - started):.0f}",
                    refresh=False,
                )
        if world > 1:
            torch.distributed.all_reduce(sums)
        bar.close()
        return sums, beta

    @torch.no_grad()
    def evaluate_loss(self, images: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
        """Mean reconstruction NLL and KL (nats/image) with fixed noise, so epochs compare."""
        self.model.eval()
        generator = torch.Generator(self.device).manual_seed(self.cfg.seed + 2)
        sums = torch.zeros(2, device=self.device)
        for start in range(0, len(images), batch_size):
            x = to_unit_interval(images[start : start + batch_size])
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                logits, mu, logvar = self.model(x, generator)
            recon, kl = elbo_terms(logits, x, mu, logvar, self.model.arch.likelihood)
            sums += torch.stack([recon.sum(), kl.sum()])
        return tuple((sums / len(images)).tolist())

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        if not torch.isfinite(loss_sum):
            self._diverged(f"training loss became {loss_sum.item()} at epoch {epoch}, step {step}")

    def _diverged(self, what: str) -> None:
        kept = (
            f"the checkpoint of epoch {len(self.history)} is kept at {self.checkpoint_path}"
            if self.checkpoint_path is not None and self.history
            else "no epoch had finished, so no checkpoint was written"
        )
        raise TrainingDivergedError(
            f"{what}; {kept}; lower train.lr or set train.grad_clip_norm, then re-run"
        )

    def _config_fingerprint(self) -> dict:
        train = dataclasses.asdict(self.cfg)
        # More epochs continue the same trajectory, except where the LR schedule depends on them.
        if self.cfg.lr_schedule == "none":
            train["epochs"] = None
        train["device"] = None
        return {"train": train, "beta": self.beta, **self.fingerprint}

    def _save_checkpoint(self) -> None:
        if self.checkpoint_path is None or not self.group.is_main:
            return
        state = {
            "config": self._config_fingerprint(),
            "model": self.model.state_dict(),
            "best_model": self.best_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "history": [dataclasses.asdict(r) for r in self.history],
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
            "rng": {
                "torch": torch.get_rng_state(),
                "shuffle": self.shuffle_generator.get_state(),
                "noise": self.noise_generator.get_state(),
            },
        }
        save_checkpoint(state, self.checkpoint_path)

    def _resume(self) -> int | None:
        """Restore state from the checkpoint, if one exists; returns the epoch resumed after."""
        state = load_checkpoint(self.checkpoint_path, self.device)
        if state is None:
            return None
        changed = changed_keys(state["config"], self._config_fingerprint())
        if changed:
            self.log(
                f"{self.checkpoint_path}: made for other inputs ({', '.join(changed)}); "
                "training afresh"
            )
            return None
        # More epochs extend the run (epochs is not in the fingerprint); fewer than the
        # checkpoint already holds would end elsewhere than an uninterrupted run.
        if len(state["history"]) > self.cfg.epochs:
            self.log(
                f"{self.checkpoint_path}: holds {len(state['history'])} epochs, more than "
                f"train.epochs ({self.cfg.epochs}); training afresh"
            )
            return None
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise CheckpointError(
                f"{self.checkpoint_path}: checkpoint weights do not fit the model in "
                "params.yaml; delete it to start afresh"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        # Adam's moments come back in the layout they were saved in; a run resumed on another
        # device can hold its weights in the other layout (prefers_channels_last), and fused
        # Adam would then pair up the wrong elements. Each moment takes its weight's layout.
        for param, moments in self.optimizer.state.items():
            for key, value in moments.items():
                if torch.is_tensor(value) and value.shape == param.shape:
                    moments[key] = torch.empty_like(param).copy_(value)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.best_state = state["best_model"]
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.best_val_loss = state["best_val_loss"]
        self.best_epoch = state["best_epoch"]
        self.epochs_without_improvement = state["epochs_without_improvement"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.shuffle_generator.set_state(state["rng"]["shuffle"].cpu())
        try:
            self.noise_generator.set_state(state["rng"]["noise"].cpu())
        except RuntimeError:  # a CPU and a CUDA generator's states do not convert
            self.noise_generator.manual_seed(self.cfg.seed + 1 + len(self.history))
            self.log(
                f"{self.checkpoint_path}: saved on another kind of device; resuming with fresh "
                "posterior noise, so the run will not match an uninterrupted one exactly"
            )
        return len(self.history)


def train_model(
    params: Params,
    splits: Splits,
    data_sha256: str,
    checkpoint_path: Path,
    group: ProcessGroup | None = None,
) -> TrainResult:
    """The pipeline's model: ``params.model``'s architecture trained with ``params.train`` on
    the training split, early stopping on the validation split. Resumes from
    ``checkpoint_path`` when it holds a checkpoint of the same params and data."""
    group = group or ProcessGroup()
    arch = resolve_architecture(params.model, splits.train.images.shape[1:])
    torch.manual_seed(params.train.seed)
    model = ConvVAE(arch)
    trainer = Trainer(
        model,
        params.train,
        beta=params.model.beta,
        checkpoint_path=checkpoint_path,
        fingerprint={"architecture": dataclasses.asdict(arch), "data_sha256": data_sha256},
        group=group,
    )
    if group.is_main:
        processes = f" x {group.world_size} processes" if group.world_size > 1 else ""
        print(f"training {count_parameters(model):,} parameters on {trainer.device}{processes}")
    # Early stopping sees the selection half of the validation images; the calibration half
    # sets the anomaly threshold in the evaluate stage.
    selection, _ = selection_and_calibration(splits.val.images)
    result = trainer.fit(torch.from_numpy(splits.train.images), torch.from_numpy(selection))
    if group.is_main:  # what the fused anomaly score compares with, saved in the model file
        anomaly = params.anomaly
        fit_reference(
            result.model, splits.train.images, selection, anomaly.samples, anomaly.noise_seed
        )
    return result


def training_metrics(result: TrainResult) -> dict[str, float | int | bool]:
    """metrics/train.json: the best epoch, whether early stopping fired, size and speed."""
    return {
        "best_val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "parameters": count_parameters(result.model),
        "images_per_s": sum(r.images_per_s for r in result.history) / len(result.history),
        "train_seconds": sum(r.seconds for r in result.history),
    }


def save_loss_curve(history: list[EpochRecord], path: Path) -> None:
    """One CSV row per epoch, for `dvc plots show` (x: epoch, y: train_loss and val_loss)."""
    fields = [f.name for f in dataclasses.fields(EpochRecord)]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in history)
