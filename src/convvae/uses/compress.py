"""Compression: images → latent codes (posterior means) at a chosen precision, and back.

A code file (.npz, compressed) holds ``codes`` (N, D) at its precision, ``precision``, for int8
the per-dimension affine ``scale`` and ``offset`` (float32 (D,); z ≈ offset + scale * (code +
128)), the image ``names`` (UTF-8 JSON bytes), the model's ``architecture`` as JSON and
``model_sha256``, a digest of the encoding model's weights: decode refuses another model (a
retrained model, or another class's, has the same architecture and would decode the codes into
wrong images without a word) and any file without the digest. The names are the user's; decode
writes each as a safe base name inside its output folder (``data.image_files``).

Rate is counted as the bytes of the code array per image (N x D x itemsize / N); the int8
scale/offset (8 x D bytes per file), the names and the npz container are not counted (`convvae
encode` prints the file's own bytes per image beside it). Distortion is measured on the decoded
Bernoulli means against the [0, 1] pixels: PSNR in dB and BCE in nats per image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from convvae.data.images import images_per_batch, to_unit_interval
from convvae.errors import DataError
from convvae.model.architecture import architecture_diff, architecture_from_dict
from convvae.model.vae import ConvVAE
from convvae.runtime.files import atomic_path, write_atomically
from convvae.uses.evaluation import posterior_means, reconstruct

PRECISIONS = {"float32": np.float32, "float16": np.float16, "int8": np.int8}
CODE_FILE_ARRAYS = ("codes", "precision", "names", "architecture", "model_sha256")


@dataclass(frozen=True)
class Codes:
    """Quantised posterior means (N, D) and what is needed to read them back."""

    values: np.ndarray
    precision: str
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None

    def latent(self) -> torch.Tensor:
        """The dequantised latent means, float32 (N, D)."""
        if self.precision == "int8":
            return torch.from_numpy(
                self.offset + self.scale * (self.values.astype(np.float32) + 128)
            )
        return torch.from_numpy(self.values.astype(np.float32))

    def bytes_per_image(self) -> float:
        """Bytes of the code array per image (side information not counted)."""
        return self.values.nbytes / len(self.values)


def quantize(latent: np.ndarray, precision: str) -> Codes:
    """float (N, D) → Codes; int8 maps each dimension's [min, max] onto the 256 levels."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    latent = latent.astype(np.float32)
    if precision != "int8":
        return Codes(latent.astype(PRECISIONS[precision]), precision)
    offset = latent.min(0)
    span = latent.max(0) - offset
    scale = np.where(span > 0, span / 255, 1.0).astype(np.float32)
    levels = np.clip(np.rint((latent - offset) / scale), 0, 255)
    return Codes((levels - 128).astype(np.int8), precision, scale, offset.astype(np.float32))


@torch.no_grad()
def encode(model: ConvVAE, images: torch.Tensor, precision: str = "float16") -> Codes:
    """uint8 images (N, C, H, W) → their posterior means as Codes at ``precision``."""
    return quantize(posterior_means(model, images).numpy(), precision)


@torch.no_grad()
def decode(model: ConvVAE, codes: Codes) -> torch.Tensor:
    """Codes (N, D) → Bernoulli means, float (N, C, H, W) in [0, 1]."""
    model.eval()
    latent, batch_size = codes.latent(), images_per_batch(model.arch.image_shape)
    return torch.cat(
        [model.decode_mean(latent[start : start + batch_size])
         for start in range(0, len(latent), batch_size)]
    )  # fmt: skip


def weights_sha256(model: ConvVAE) -> str:
    """A digest of the model's weights (every tensor of its state_dict, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_codes(codes: Codes, names: list[str], model: ConvVAE, path: str | Path) -> None:
    """Write a code file atomically (see the module docstring for its arrays)."""
    arrays = {
        "codes": codes.values,
        "precision": np.array(codes.precision),
        "names": np.frombuffer(json.dumps(names).encode(), dtype=np.uint8),
        "architecture": np.array(json.dumps(dataclasses.asdict(model.arch), sort_keys=True)),
        "model_sha256": np.array(weights_sha256(model)),
    }
    if codes.scale is not None:
        arrays |= {"scale": codes.scale, "offset": codes.offset}
    write_atomically(path, lambda handle: np.savez_compressed(handle, **arrays))


def load_codes(path: str | Path, model: ConvVAE) -> tuple[Codes, list[str]]:
    """Read a code file; an unreadable one, or one written by another model (architecture or
    weights), is a DataError."""
    arch = model.arch
    path = Path(path)
    fix = "pass an .npz written by `convvae encode`, or re-encode the images"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}); {fix}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single array, not a code file; {fix}")
    with archive:
        # The digest is required: without it, a file that only states the architecture would
        # decode with any model (files from before the digest are re-encoded).
        missing = set(CODE_FILE_ARRAYS) - set(archive.files)
        if missing:
            raise DataError(f"{path}: no {', '.join(sorted(missing))} array; {fix}")
        stored = {key: archive[key] for key in archive.files}
    precision = str(stored["precision"])
    codes = Codes(stored["codes"], precision, stored.get("scale"), stored.get("offset"))
    names = _names(stored["names"], path, fix)
    try:
        written_by = architecture_from_dict(json.loads(str(stored["architecture"])))
    except (ValueError, TypeError) as err:
        raise DataError(f"{path}: unreadable architecture ({type(err).__name__}); {fix}") from None
    if written_by != arch:
        raise DataError(
            f"{path}: written by another model architecture: "
            f"{architecture_diff(written_by, arch, 'model has')}; decode with the model that "
            "encoded it"
        )
    if str(stored["model_sha256"]) != weights_sha256(model):
        raise DataError(
            f"{path}: written by a model with other weights (same architecture: a retrained "
            "model, or another class's); decode with the model that encoded it"
        )
    _check_shapes(codes, names, arch.latent_dim, path)
    int8_side_info = codes.scale is not None and codes.offset is not None
    if (
        precision not in PRECISIONS
        or codes.values.dtype != PRECISIONS[precision]
        or (precision == "int8" and not int8_side_info)
    ):
        raise DataError(
            f"{path}: codes of dtype {codes.values.dtype} do not match precision {precision}"
        )
    return codes, names


def _check_shapes(codes: Codes, names: list[str], latent_dim: int, path: Path) -> None:
    """One code of the model's latent size per name, and int8 side information per dimension:
    a forged or truncated file is a DataError, never a raw shape error mid-decode."""
    values = codes.values
    if values.ndim != 2 or values.shape[1] != latent_dim:
        raise DataError(
            f"{path}: codes of shape {values.shape}, the model decodes (N, {latent_dim}); "
            "decode with the model that encoded it, or re-encode the images"
        )
    if len(names) != len(values):
        raise DataError(
            f"{path}: {len(values)} codes but {len(names)} image names; the file is damaged: "
            "re-encode the images"
        )
    for side in (codes.scale, codes.offset):
        if side is not None and side.shape != (latent_dim,):
            raise DataError(
                f"{path}: int8 scale or offset of shape {side.shape}, expected ({latent_dim},); "
                "the file is damaged: re-encode the images"
            )


def _names(stored: np.ndarray, path: Path, fix: str) -> list[str]:
    """The image names: UTF-8 JSON bytes, or (files written before) a unicode array."""
    if stored.dtype != np.uint8:
        names = stored.tolist() if stored.ndim == 1 else None
    else:
        try:
            names = json.loads(stored.tobytes().decode())
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
            names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise DataError(f"{path}: unreadable image names; {fix}")
    return names


def psnr_db(mse: float) -> float | None:
    """Peak signal-to-noise ratio for pixels in [0, 1]: 10 log10(1 / MSE); None when lossless."""
    return None if mse == 0 else 10 * math.log10(1 / mse)


def bce_nats(means: torch.Tensor, images: torch.Tensor) -> float:
    """BCE of the [0, 1] targets (uint8 images) under Bernoulli means, nats per image."""
    targets = to_unit_interval(images)
    return F.binary_cross_entropy(means.float(), targets, reduction="sum").item() / len(images)


def codec_round_trip(
    images: np.ndarray, codec: str, quality: int | None = None
) -> tuple[float, np.ndarray]:
    """Encode each uint8 image (N, C, H, W) as PNG or JPEG with Pillow, in memory.

    Returns (mean file bytes per image, decoded uint8 images (N, C, H, W)).
    """
    total, decoded = 0, []
    for image in images:
        pixels = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        buffer = io.BytesIO()
        options = {"quality": quality} if codec == "JPEG" else {"optimize": True}
        Image.fromarray(pixels).save(buffer, format=codec, **options)
        total += buffer.tell()
        buffer.seek(0)
        with Image.open(buffer) as reread:
            array = np.asarray(reread)
        decoded.append(array[None] if array.ndim == 2 else np.transpose(array, (2, 0, 1)))
    return total / len(images), np.stack(decoded)


def rate_distortion(
    model: ConvVAE, images: torch.Tensor, jpeg_qualities: list[int]
) -> list[dict[str, float | str | None]]:
    """One row per method: latent codes at each precision, PNG, JPEG at each quality.

    images: uint8 (N, C, H, W). Row keys: method, bytes_per_image, mse (on [0, 1] pixels),
    psnr_db (None for lossless), bce_nats (per image; only for the VAE's Bernoulli means: JPEG
    and PNG output hard pixel values, whose BCE is infinite wherever a level is off).
    """
    truth = to_unit_interval(images)
    rows: list[dict[str, float | str | None]] = []
    float32_recon = reconstruct(model, images)
    for precision in PRECISIONS:
        codes = encode(model, images, precision)
        means = decode(model, codes)
        mse = F.mse_loss(means, truth).item()
        rows.append(
            {
                "method": f"vae-{precision}",
                "bytes_per_image": codes.bytes_per_image(),
                "mse": mse,
                "psnr_db": psnr_db(mse),
                "bce_nats": bce_nats(means, images),
                "max_change_vs_float32": (means - float32_recon).abs().max().item(),
            }
        )
    pixels = images.numpy()
    for codec, quality in [("PNG", None), *(("JPEG", q) for q in jpeg_qualities)]:
        size, decoded = codec_round_trip(pixels, codec, quality)
        mse = F.mse_loss(to_unit_interval(torch.from_numpy(decoded)), truth).item()
        name = "png" if quality is None else f"jpeg-q{quality}"
        rows.append({"method": name, "bytes_per_image": size, "mse": mse, "psnr_db": psnr_db(mse)})
    return rows


def save_rate_distortion_plot(rows: list[dict], path: str | Path) -> None:
    """Bytes per image (log x) against PSNR; lossless rows are marked at the top edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    lossy = [r for r in rows if r["psnr_db"] is not None]
    top = max(r["psnr_db"] for r in lossy) + 3
    for family, marker in (("vae", "o"), ("jpeg", "s")):
        points = [r for r in lossy if r["method"].startswith(family)]
        ax.plot(
            [r["bytes_per_image"] for r in points],
            [r["psnr_db"] for r in points],
            marker=marker,
            label=family.upper(),
        )
        for r in points:
            ax.annotate(
                r["method"].split("-", 1)[1], (r["bytes_per_image"], r["psnr_db"]), fontsize=7
            )
    for r in rows:
        if r["psnr_db"] is None:
            ax.scatter(
                [r["bytes_per_image"]],
                [top],
                marker="^",
                color="black",
                label=f"{r['method'].upper()} (lossless)",
            )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("bytes per image (log scale)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("Rate-distortion on test images")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
