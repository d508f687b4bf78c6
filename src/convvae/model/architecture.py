"""A ConvVAE's architecture: what every model file stores to rebuild its network, the presets,
and the default preset's depth, which follows the image size."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from convvae.config import ModelConfig
from convvae.errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    """Everything needed to build a ConvVAE; stored inside every model file."""

    image_channels: int = 1
    image_size: tuple[int, int] = (28, 28)  # (height, width)
    # Output channels of the stride-2 convolutions, first to last.
    channels: tuple[int, ...] = (32, 64)
    kernel_size: int = 4
    # Widths of the fully connected layers between the conv features and the latent code.
    encoder_hidden: tuple[int, ...] = (512,)
    decoder_hidden: tuple[int, ...] = (512,)
    latent_dim: int = 16
    likelihood: str = "bernoulli"  # one of convvae.model.likelihood.LIKELIHOODS
    # Gaussian only: a standard deviation per pixel, or one per channel shared by all pixels.
    variance: str = "pixel"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the model takes."""
        return (self.image_channels, *self.image_size)


PRESETS: dict[str, Architecture] = {
    # Our default: ~3.3 M parameters, dominated by two 3136x512 matmuls that run near peak on CPU.
    "default": Architecture(),
    # The design this project started from (conv 1→16→32 k3 s2, FC 1568→15000→15000, latent 2):
    # 272 M parameters, kept to compare against.
    "seed": Architecture(
        channels=(16, 32),
        kernel_size=3,
        encoder_hidden=(15000, 15000),
        decoder_hidden=(15000,),
        latent_dim=2,
    ),
}


# The default preset's conv widths by depth: one stride-2 layer per halving of the image side
# until its longer side is at most 7 pixels (28 → 14 → 7: two layers; 64 → 4: four; 256 → 4: six),
# or until another layer would leave the shorter side no pixel (16x128 → 1x8: four layers).
_DEFAULT_WIDTHS = (32, 64, 128, 256, 256, 256, 256)
_LARGEST_FEATURE_SIDE = 7


def default_architecture(image_shape: tuple[int, int, int]) -> Architecture:
    """The default preset for images (C, H, W): depth from the size (module docstring), a
    latent code of 16 dimensions for images up to 31 pixels a side and 64 above (texture and
    photo patches carry more than a digit)."""
    channels, height, width = image_shape
    depth, side, short_side = 0, max(height, width), min(height, width)
    # A kernel-4, stride-2 layer halves a side, rounding down (feature_sizes).
    while side > _LARGEST_FEATURE_SIDE and short_side >= 2 and depth < len(_DEFAULT_WIDTHS):
        side, short_side, depth = (side + 1) // 2, short_side // 2, depth + 1
    return dataclasses.replace(
        PRESETS["default"],
        image_channels=channels,
        image_size=(height, width),
        channels=_DEFAULT_WIDTHS[: max(depth, 1)],
        latent_dim=16 if min(height, width) < 32 else 64,
    )


def resolve_architecture(cfg: ModelConfig, image_shape: tuple[int, ...]) -> Architecture:
    """The preset named in ``cfg`` for images (C, H, W), with the overrides and the likelihood
    of ``cfg`` applied, checked against the data."""
    channels, height, width = (int(size) for size in image_shape)
    base = (
        default_architecture((channels, height, width))
        if cfg.preset == "default"
        else dataclasses.replace(
            PRESETS[cfg.preset], image_channels=channels, image_size=(height, width)
        )
    )
    overrides = {
        key: tuple(value) if isinstance(value, list) else value
        for key in ("channels", "kernel_size", "encoder_hidden", "decoder_hidden", "latent_dim")
        if (value := getattr(cfg, key)) is not None
    }
    if cfg.likelihood == "auto":  # Params resolves it per data source, once
        raise ValueError("model.likelihood is auto: build the config with convvae.config.Params")
    arch = dataclasses.replace(base, likelihood=cfg.likelihood, variance=cfg.variance, **overrides)
    if min(feature_sizes(arch)[-1]) < 1:
        raise ConfigError(
            f"model.channels has {len(arch.channels)} stride-2 layers, too many for "
            f"{height}x{width} images; use fewer"
        )
    return arch


def conv_padding(kernel_size: int) -> int:
    return (kernel_size - 1) // 2


def feature_sizes(arch: Architecture) -> list[tuple[int, int]]:
    """(H, W) before each conv layer and after the last: 28 → 14 → 7 for the default."""
    k, pad = arch.kernel_size, conv_padding(arch.kernel_size)
    sizes = [tuple(arch.image_size)]
    for _ in arch.channels:
        sizes.append(tuple((side + 2 * pad - k) // 2 + 1 for side in sizes[-1]))
    return sizes


def transposed_conv_side(
    side: int, stride: int, padding: int, kernel: int, output_padding: int = 0
) -> int:
    """The output side of a transposed convolution (no dilation) for an input side."""
    return (side - 1) * stride - 2 * padding + kernel + output_padding


def architecture_from_dict(raw: dict) -> Architecture:
    """Inverse of ``dataclasses.asdict`` for an Architecture read from a file (files written
    before images could be rectangular store one side as an int)."""
    fields = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in raw.items()}
    if isinstance(fields.get("image_size"), int):
        fields["image_size"] = (fields["image_size"],) * 2
    return Architecture(**fields)


def architecture_diff(found: Architecture, wanted: Architecture, wanted_label: str) -> str:
    """The fields that differ, as "latent_dim=4 (<wanted_label> 7), ..." for error messages."""
    return ", ".join(
        f"{f.name}={getattr(found, f.name)} ({wanted_label} {getattr(wanted, f.name)})"
        for f in dataclasses.fields(Architecture)
        if getattr(found, f.name) != getattr(wanted, f.name)
    )
