"""The trainer: batches sliced from an in-memory uint8 tensor, checkpoints, resume, early stop.

Reproducible on CPU: the shuffle order and the reparameterisation noise come from generators
whose states are saved in every checkpoint, so a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from convvae.config import TrainConfig
from convvae.errors import CheckpointError, ConfigError, TrainingDivergedError
from convvae.files import atomic_path
from convvae.model import ConvVAE, elbo_terms

CHECKPOINT_FORMAT = 1


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


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among data-parallel workers (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, outputs and tracking; the others only train."""
        return self.rank == 0


def init_distributed(cfg: TrainConfig) -> ProcessGroup:
    """Join the process group that ``torchrun`` describes in the environment.

    Distributed when torchrun started several processes (WORLD_SIZE > 1) or train.distributed
    is true; NCCL on CUDA, gloo on CPU. Without torchrun, train.distributed is a ConfigError.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not cfg.distributed:
        return ProcessGroup()
    if "RANK" not in os.environ:
        raise ConfigError(
            "train.distributed is true but this process was not started by torchrun; run "
            "`torchrun --nproc-per-node N -m pipeline.train` or set train.distributed: false"
        )
    group = ProcessGroup(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))
    if not torch.distributed.is_initialized():
        use_nccl = select_device(cfg.device).type == "cuda"
        if use_nccl:
            torch.cuda.set_device(group.local_rank)
        torch.distributed.init_process_group("nccl" if use_nccl else "gloo")
    return group


def select_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is visible; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is mps but MPS is not available; use auto or cpu")
    return torch.device(name)


def to_unit_interval(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float32 in [0, 1], the Bernoulli targets; floats pass through."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


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
        best = copy.deepcopy(self.model).to("cpu")
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
        self.parallel_model.train()
        n, batch_size = len(train_images), self.cfg.batch_size
        rank, world = self.group.rank, self.group.world_size
        steps = math.ceil(n / batch_size)
        # One gather per epoch; every batch is then a contiguous slice of uint8 memory.
        order = torch.randperm(n, generator=self.shuffle_generator).to(self.device)
        shuffled = train_images[order]
        sums = torch.zeros(3, device=self.device)  # loss, recon, kl, summed over images
        started = time.perf_counter()
        bar = tqdm(
            total=n,
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            unit="img",
            # None: a live bar on a terminal only; logs get the one line per epoch below.
            disable=None if self.progress and self.group.is_main else True,
            mininterval=1.0,
            leave=False,
        )
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
            recon, kl = elbo_terms(logits, x, mu, logvar)
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
            recon, kl = elbo_terms(logits, x, mu, logvar)
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
            "format": CHECKPOINT_FORMAT,
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
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def _resume(self) -> int | None:
        """Restore state from the checkpoint, if one exists; returns the epoch resumed after."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            saved_config = state["config"]
        except Exception as err:  # torch raises many types for a corrupt file
            raise CheckpointError(
                f"{path}: unreadable training checkpoint ({type(err).__name__}); delete it to "
                "start training afresh"
            ) from None
        current = self._config_fingerprint()
        if saved_config != current:
            changed = sorted(
                k
                for k in current.keys() | saved_config.keys()
                if saved_config.get(k) != current.get(k)
            )
            self.log(f"{path}: made for other inputs ({', '.join(changed)}); training afresh")
            return None
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError:
            raise CheckpointError(
                f"{path}: checkpoint weights do not fit the model in params.yaml; delete it to "
                "start afresh"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.best_state = state["best_model"]
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.best_val_loss = state["best_val_loss"]
        self.best_epoch = state["best_epoch"]
        self.epochs_without_improvement = state["epochs_without_improvement"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.shuffle_generator.set_state(state["rng"]["shuffle"].cpu())
        self.noise_generator.set_state(state["rng"]["noise"].cpu())
        return len(self.history)
