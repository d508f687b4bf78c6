"""The ConvVAE: encode / reparameterize / decode and its loss terms.

Images are tensors of shape (B, C, H, W) with pixel intensities in [0, 1]. The decoder returns
the parameters of the architecture's pixel likelihood (``convvae.model.likelihood``: Bernoulli
logits, Gaussian or discretized-logistic location and scale); the reconstruction term is its
negative log-likelihood in nats per image.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from convvae.data.images import check_pixels
from convvae.model.architecture import (
    Architecture,
    conv_padding,
    default_architecture,
    feature_sizes,
    transposed_conv_side,
)
from convvae.model.likelihood import OUTPUTS_PER_CHANNEL, pixel_mean, pixel_nll


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class _MatmulFoldTransposedConv(torch.autograd.Function):
    """conv_transpose2d (no dilation, one group) as one matmul and a col2im (``F.fold``),
    backward by PyTorch's own convolution_backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding):
        batch, c_in, height, width = x.shape
        _, c_out, kh, kw = weight.shape
        out_size = tuple(
            transposed_conv_side(*sides)
            for sides in zip(
                (height, width), stride, padding, (kh, kw), output_padding, strict=True
            )
        )
        # (B, H*W, C_in) @ (C_in, C_out*kh*kw): each input pixel's contribution to its patch.
        pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, c_in)
        patches = pixels @ weight.reshape(c_in, c_out * kh * kw)
        out = nn.functional.fold(patches.transpose(1, 2), out_size, (kh, kw), 1, padding, stride)
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, output_padding)
        return out + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, output_padding = ctx.conv
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_out,
            x,
            weight,
            [weight.shape[1]],
            list(stride),
            list(padding),
            [1, 1],
            True,
            list(output_padding),
            1,
            list(ctx.needs_input_grad[:3]),
        )
        return grad_x, grad_weight, grad_bias, None, None, None


class _FewChannelsConvTranspose2d(nn.ConvTranspose2d):
    """The decoder's last layer (a few output channels: the likelihood's parameters). On CPU,
    oneDNN's transposed convolution to one channel runs at ~8 GFLOP/s (torch.profiler, 2-core
    AMD EPYC: 7% of a training step for 1% of its FLOPs); a matmul and a col2im give the same
    sums 2.7x faster (training steps 3-6% faster, decoding 10-20%). ``torch.export`` (so the
    ONNX and MLflow pt2 files), other devices, autocast and any other layer setting keep
    PyTorch's operator."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        native = (
            x.device.type != "cpu"
            or x.dim() != 4
            or x.dtype != self.weight.dtype
            or self.bias is None
            or self.groups != 1
            or self.dilation != (1, 1)
            or output_size is not None
            or torch.is_autocast_enabled("cpu")
        )
        if native or torch.compiler.is_exporting():
            return super().forward(x, output_size)
        return _MatmulFoldTransposedConv.apply(
            x, self.weight, self.bias, self.stride, self.padding, self.output_padding
        )


class ConvVAE(nn.Module):
    """Convolutional VAE with a diagonal Gaussian posterior and the architecture's likelihood."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        # How the prepare stage resized a folder's images (its manifest's "preprocessing"), so
        # that `convvae score --resize` does the same; None for the fixed-size sources.
        self.preprocessing: dict | None = None
        k, pad = arch.kernel_size, conv_padding(arch.kernel_size)
        sizes = feature_sizes(arch)
        conv_widths = [arch.image_channels, *arch.channels]
        self.feature_shape = (arch.channels[-1], *sizes[-1])
        feature_dim = math.prod(self.feature_shape)

        encoder: list[nn.Module] = []
        for c_in, c_out in pairwise(conv_widths):
            encoder += [nn.Conv2d(c_in, c_out, k, stride=2, padding=pad), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(
            *encoder, nn.Flatten(), _mlp([feature_dim, *arch.encoder_hidden])
        )
        last_hidden = arch.encoder_hidden[-1] if arch.encoder_hidden else feature_dim
        self.to_mu = nn.Linear(last_hidden, arch.latent_dim)
        self.to_logvar = nn.Linear(last_hidden, arch.latent_dim)

        self.decoder_mlp = _mlp([arch.latent_dim, *arch.decoder_hidden, feature_dim])
        decoder: list[nn.Module] = []
        # The decoder's last layer outputs the likelihood's parameters for each image channel.
        shared_variance = arch.likelihood == "gaussian" and arch.variance == "shared"
        outputs = 1 if shared_variance else OUTPUTS_PER_CHANNEL[arch.likelihood]
        reversed_widths = [*conv_widths[::-1][:-1], outputs * arch.image_channels]
        # One log standard deviation per channel, for all pixels (gaussian, variance: shared).
        self.shared_log_std = (
            nn.Parameter(torch.zeros(arch.image_channels)) if shared_variance else None
        )
        for i, (c_in, c_out) in enumerate(pairwise(reversed_widths)):
            size_in, size_out = sizes[-1 - i], sizes[-2 - i]
            # output_padding restores sizes that the encoder's floor division lost (7 → 14 → 28).
            extra = tuple(
                out - transposed_conv_side(side, 2, pad, k)
                for side, out in zip(size_in, size_out, strict=True)
            )
            # The last layer outputs the likelihood's parameters: a few channels, no ReLU.
            last = i == len(arch.channels) - 1
            layer = _FewChannelsConvTranspose2d if last else nn.ConvTranspose2d
            decoder.append(layer(c_in, c_out, k, stride=2, padding=pad, output_padding=extra))
            if not last:
                decoder.append(nn.ReLU(inplace=True))
        self.decoder_conv = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) in [0, 1] → posterior mean and log-variance, each (B, latent_dim)."""
        hidden = self.encoder(x)
        return self.to_mu(hidden), self.to_logvar(hidden)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """The first convolution and its ReLU: (B, C', H', W'), one feature per 4x4 patch at
        stride 2 (the patch map's features)."""
        return self.encoder[:2](x)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(H', W') of ``patch_features``."""
        return feature_sizes(self.arch)[1]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) → the likelihood's parameters (B, P*C, H, W), P from
        ``convvae.model.likelihood.OUTPUTS_PER_CHANNEL`` (Bernoulli: the logits)."""
        # Channels-last: on CPU, oneDNN's transposed convolutions run about 1.5x faster on it
        # at the scoring batches (thousands of posterior samples; measured on the grey 28x28
        # default, where training speed did not change). The last layer's matmul + col2im (CPU)
        # returns the usual layout; the native one, with several channels, costs a copy below.
        features = self.decoder_mlp(z).view(-1, *self.feature_shape)
        channels_last = features.contiguous(memory_format=torch.channels_last)
        out = self.decoder_conv(channels_last).contiguous()
        if self.shared_log_std is not None:
            log_std = self.shared_log_std.to(out.dtype)[None, :, None, None].expand_as(out)
            out = torch.cat([out, log_std], dim=1)
        return out

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) → the decoded images' means in [0, 1], (B, C, H, W)."""
        return pixel_mean(self.arch.likelihood, self.decode(z))

    def pixel_nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel -log p(x | z), nats, like ``x``, for decoder output ``out``."""
        return pixel_nll(self.arch.likelihood, out, x)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor,
        logvar: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) drawn from ``generator``, or given as ``eps``."""
        if eps is None:
            eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
        return mu + torch.exp(0.5 * logvar) * eps

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (decoder output (B, P*C, H, W), mu (B, D), logvar (B, D)); ``eps`` (B, D)
        fixes the noise."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, generator, eps)), mu, logvar


class Reconstructor(nn.Module):
    """x → the mean image of its reconstruction from the posterior mean: one tensor out, as
    MLflow's PyTorch flavour and torch.export want."""

    def __init__(self, vae: ConvVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.vae.encode(x)
        return self.vae.decode_mean(mu)


def elbo_terms(
    out: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    likelihood: str = "bernoulli",
    *,
    pixels_checked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction NLL under ``likelihood`` and KL(q(z|x) || N(0, I)), both (B,)
    in nats, for decoder output ``out``.

    neg_elbo = recon_nll + kl; a beta-VAE trains on recon_nll + beta * kl. ``pixels_checked``:
    the caller has already checked that ``x`` lies in [0, 1] (the check reads the values back,
    which makes a GPU wait at every call; ``Trainer`` checks its training images once per fit
    instead of at every step).
    """
    if not pixels_checked:
        check_pixels(x)
    recon_nll = pixel_nll(likelihood, out.float(), x).flatten(1).sum(1)
    mu, logvar = mu.float(), logvar.float()
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return recon_nll, kl


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Image sizes whose default preset docs/configuration.md tables (`convvae presets` prints them).
PRESET_SIZES = ((1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 128, 128), (3, 256, 256))


def preset_table(sizes: tuple[tuple[int, int, int], ...] = PRESET_SIZES) -> list[dict]:
    """The default preset per image size: conv widths, latent size, parameters and forward
    FLOPs per image (torch's FlopCounterMode: matmuls and convolutions, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for shape in sizes:
        arch = default_architecture(shape)
        model = ConvVAE(arch)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.rand(1, *shape))
        rows.append(
            {
                "image": "x".join(map(str, shape)),
                "conv_channels": list(arch.channels),
                "latent_dim": arch.latent_dim,
                "parameters": count_parameters(model),
                "forward_mflops_per_image": round(counter.get_total_flops() / 1e6, 1),
            }
        )
    return rows
