"""The ConvVAE's shapes, loss terms, presets and model files."""

import dataclasses

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from convvae.config import ModelConfig
from convvae.data.images import to_unit_interval
from convvae.errors import CheckpointError, ConfigError
from convvae.model.architecture import PRESETS, Architecture, resolve_architecture
from convvae.model.files import load_model, save_model
from convvae.model.vae import ConvVAE, count_parameters, elbo_terms
from tests.conftest import TINY, tiny_model


@pytest.mark.parametrize(
    "arch",
    [
        PRESETS["default"],
        Architecture(channels=(8, 16, 32), kernel_size=3, encoder_hidden=(), decoder_hidden=()),
        Architecture(channels=(8,), kernel_size=5, encoder_hidden=(32, 16), latent_dim=3),
        Architecture(image_channels=3, image_size=(32, 32), channels=(8, 16), kernel_size=4),
        Architecture(image_channels=3, image_size=(40, 56), channels=(8, 16, 32), kernel_size=3),
    ],
)
def test_output_shapes_match_input(arch):
    model = ConvVAE(arch)
    x = torch.rand(5, *arch.image_shape)
    logits, mu, logvar = model(x)
    assert logits.shape == x.shape
    assert mu.shape == logvar.shape == (5, arch.latent_dim)


@pytest.mark.parametrize(
    ("likelihood", "variance", "outputs"),
    [("bernoulli", "pixel", 1), ("gaussian", "pixel", 2), ("gaussian", "shared", 2),
     ("discretized_logistic", "pixel", 2)],
)  # fmt: skip
def test_each_likelihood_decodes_its_parameters_and_a_mean_image(likelihood, variance, outputs):
    arch = Architecture(image_channels=3, image_size=(16, 16), channels=(8,),
                        likelihood=likelihood, variance=variance)  # fmt: skip
    model = ConvVAE(arch)
    x = torch.rand(4, 3, 16, 16)
    out, mu, logvar = model(x)
    assert out.shape == (4, 3 * outputs, 16, 16)
    mean = model.decode_mean(mu)
    assert mean.shape == x.shape and mean.min() >= 0 and mean.max() <= 1
    recon, _ = elbo_terms(out, x, mu, logvar, likelihood)
    assert recon.shape == (4,) and torch.isfinite(recon).all()
    recon.sum().backward()  # every parameter, the shared deviation included, gets a gradient
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "size_in", "size_out", "channels_last"),
    [
        (32, 1, 4, (14, 14), (28, 28), True),  # the default's last layer
        (8, 6, 3, (7, 5), (14, 9), False),  # RGB Gaussian, odd sizes (output_padding 1 and 0)
        (4, 3, 5, (10, 13), (19, 25), True),
    ],
)
def test_the_last_layer_computes_what_pytorchs_transposed_conv_does(
    c_in, c_out, kernel, size_in, size_out, channels_last
):
    """Its matmul + col2im forward and aten backward give the outputs and gradients of
    nn.ConvTranspose2d with the same weights (and the export path uses that operator)."""
    from convvae.model.vae import _FewChannelsConvTranspose2d

    torch.manual_seed(0)
    pad = (kernel - 1) // 2
    sizes = zip(size_in, size_out, strict=True)
    extra = tuple(out - ((side - 1) * 2 - 2 * pad + kernel) for side, out in sizes)
    ours = _FewChannelsConvTranspose2d(c_in, c_out, kernel, 2, pad, output_padding=extra)
    theirs = torch.nn.ConvTranspose2d(c_in, c_out, kernel, 2, pad, output_padding=extra)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, c_in, *size_in)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for layer in (ours, theirs):
        inputs = x.clone().requires_grad_()
        out = layer(inputs)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, inputs.grad, layer.weight.grad, layer.bias.grad))
        assert out.shape == (5, c_out, *size_out)
    for mine, reference in zip(*results, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)
    exported = torch.export.export(ours.eval(), (x,), strict=True).graph_module.code
    assert "conv_transpose2d" in exported or "convolution" in exported
    assert "col2im" not in exported


@pytest.mark.parametrize(
    ("settings", "shape", "autocast"),
    [
        ({"groups": 2}, (3, 4, 5, 6), False),
        ({"dilation": 2}, (3, 4, 5, 6), False),
        ({}, (4, 5, 6), False),  # one unbatched image
        ({}, (3, 4, 5, 6), True),  # bf16 autocast on CPU
    ],
)
def test_settings_the_last_layer_does_not_compute_itself_give_pytorchs_result(
    settings, shape, autocast
):
    from convvae.model.vae import _FewChannelsConvTranspose2d

    torch.manual_seed(0)
    ours = _FewChannelsConvTranspose2d(4, 2, 3, 2, 1, **settings)
    theirs = torch.nn.ConvTranspose2d(4, 2, 3, 2, 1, **settings)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(shape)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        mine, reference = ours(x), theirs(x)
    assert mine.dtype == reference.dtype
    torch.testing.assert_close(mine, reference)


def test_default_preset_depth_follows_the_image_size():
    sides = {}
    for height, width in [(28, 28), (32, 32), (64, 64), (256, 256), (48, 96)]:
        arch = resolve_architecture(ModelConfig(likelihood="bernoulli"), (3, height, width))
        sides[height, width] = len(arch.channels)
        model = ConvVAE(arch)
        assert max(model.feature_shape[1:]) <= 7  # downsampled to a few pixels
        assert min(model.feature_shape[1:]) >= 3
    assert sides == {(28, 28): 2, (32, 32): 3, (64, 64): 4, (256, 256): 6, (48, 96): 4}
    assert resolve_architecture(
        ModelConfig(likelihood="bernoulli"), (1, 28, 28)
    ) == dataclasses.replace(
        PRESETS["default"], likelihood="bernoulli"
    )  # 28x28 grey behaves as before


@pytest.mark.parametrize(
    ("shape", "depth", "features"),
    [((3, 16, 128), 4, (1, 8)), ((1, 8, 64), 3, (1, 8)), ((3, 32, 256), 5, (1, 8))],
)
def test_default_preset_fits_strips(shape, depth, features):
    # Images that data.image_size accepts (each side >= 8) but far from square: the depth
    # stops while the shorter side still has a pixel, and a training step runs.
    model = ConvVAE(resolve_architecture(ModelConfig(likelihood="bernoulli"), shape))
    assert len(model.arch.channels) == depth and model.feature_shape[1:] == features
    x = torch.rand(2, *shape)
    out, mu, logvar = model(x)
    assert out.shape == (2, *shape)
    out.sum().backward()


def test_presets_have_the_documented_sizes():
    with torch.device("meta"):  # the seed preset's 272 M parameters need no real memory
        seed, default = ConvVAE(PRESETS["seed"]), ConvVAE(PRESETS["default"])
    assert 272_000_000 < count_parameters(seed) < 272_500_000
    assert 1_000_000 < count_parameters(default) < 10_000_000
    assert PRESETS["seed"].latent_dim == 2 and PRESETS["seed"].channels == (16, 32)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    x = torch.rand(6, 1, 28, 28)
    _, kl = elbo_terms(torch.zeros_like(x), x, mu, logvar)
    posterior = Normal(mu, torch.exp(0.5 * logvar))
    expected = kl_divergence(posterior, Normal(torch.zeros(4), torch.ones(4))).sum(1)
    torch.testing.assert_close(kl, expected)


def test_reconstruction_term_is_bernoulli_nll_in_nats():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    logits = torch.randn_like(x)
    recon, _ = elbo_terms(logits, x, torch.zeros(3, 2), torch.zeros(3, 2))
    p = torch.sigmoid(logits)
    expected = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(recon, expected, rtol=1e-4, atol=1e-3)


def test_targets_stay_in_unit_interval():
    # The seed normalised to [-1, 1] and crashed BCE; our pipeline scales uint8 by 1/255.
    raw = torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8).view(1, 1, 1, 5)
    scaled = to_unit_interval(raw)
    assert scaled.min() == 0 and scaled.max() == 1
    normalised = scaled * 2 - 1  # what Normalize(0.5, 0.5) produced
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        elbo_terms(torch.zeros_like(normalised), normalised, torch.zeros(1, 2), torch.zeros(1, 2))


def test_resolve_architecture_applies_overrides_and_data_shape():
    cfg = ModelConfig(latent_dim=8, channels=[16, 32, 64], likelihood="bernoulli")
    arch = resolve_architecture(cfg, (3, 32, 32))
    assert arch.latent_dim == 8 and arch.channels == (16, 32, 64)
    assert arch.image_channels == 3 and arch.image_size == (32, 32)
    assert arch.encoder_hidden == PRESETS["default"].encoder_hidden


def test_resolve_architecture_rejects_impossible_shapes():
    with pytest.raises(ConfigError, match="model.channels"):
        resolve_architecture(ModelConfig(channels=[4] * 6, likelihood="bernoulli"), (1, 28, 28))


def test_model_file_round_trip(tmp_path):
    model = tiny_model()
    path = tmp_path / "m.pt"
    save_model(model, path)
    loaded = load_model(path, expected=TINY)
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded.encode(x), model.encode(x))
    assert not list(tmp_path.glob(".*tmp"))  # the temporary name was renamed away


def test_model_file_of_wrong_shape_is_a_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    save_model(tiny_model(), path)
    other = dataclasses.replace(TINY, latent_dim=7)
    with pytest.raises(CheckpointError, match=r"latent_dim=4 \(config wants 7\)"):
        load_model(path, expected=other)


def test_weights_that_do_not_fit_the_stored_architecture(tmp_path):
    path = tmp_path / "m.pt"
    save_model(tiny_model(), path)
    payload = torch.load(path, weights_only=True)
    payload["architecture"]["latent_dim"] = 5
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)


def test_a_forged_architecture_is_refused_before_the_network_is_built(tmp_path, monkeypatch):
    # A file that states a huge network beside small weights would allocate the network (here
    # 3136 x 10**6 floats, 12.5 GB) before load_state_dict noticed; it is checked on the meta
    # device first, so no real tensor of that size is ever made.
    path = tmp_path / "m.pt"
    save_model(tiny_model(), path)
    payload = torch.load(path, weights_only=True)
    built = []
    monkeypatch.setattr(ConvVAE, "__init__", _counting(ConvVAE.__init__, built))
    forged = {
        "huge": ({**payload["architecture"], "encoder_hidden": [10**6]}, "weights do not fit"),
        "junk": ({**payload["architecture"], "kernel_size": "4"}, "not a convvae model file"),
    }
    for name, (architecture, message) in forged.items():
        torch.save({**payload, "architecture": architecture}, tmp_path / f"{name}.pt")
        built.clear()
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path / f"{name}.pt")
        assert built == ["meta"]  # only the memoryless build ran
    for size in ([100_000, 100_000], [0, 28], "28"):
        torch.save({**payload, "preprocessing": {"image_size": size}}, tmp_path / "pre.pt")
        with pytest.raises(CheckpointError, match="stored preprocessing size"):
            load_model(tmp_path / "pre.pt")


def test_a_forged_file_cannot_inflate_inside_the_loader(tmp_path):
    # Two ways a small file loads as large tensors: a stride-0 view (one float saved, a full
    # matrix loaded) and compressed zip entries (torch.save never writes them).
    import zipfile

    path = tmp_path / "m.pt"
    save_model(tiny_model(), path)
    payload = torch.load(path, weights_only=True)
    key = next(k for k, v in payload["state_dict"].items() if v.ndim == 2)
    expanded = torch.zeros(1).expand(100_000, 3136)
    payload["state_dict"][key] = expanded
    torch.save(payload, tmp_path / "expanded.pt")
    assert (tmp_path / "expanded.pt").stat().st_size < 10 * path.stat().st_size
    with pytest.raises(
        CheckpointError, match=r"tensors hold 12\d{8} bytes but the file only \d+ \(expanded"
    ):
        load_model(tmp_path / "expanded.pt")
    with (
        zipfile.ZipFile(path) as plain,
        zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as deflated,
    ):
        for entry in plain.infolist():
            deflated.writestr(entry.filename, plain.read(entry))
    with pytest.raises(CheckpointError, match="compressed or inflating entries"):
        load_model(tmp_path / "deflated.pt")
    load_model(path)  # the file torch.save wrote still loads


def _counting(init, built: list):
    def counted(self, *args, **kwargs):
        built.append(torch.empty(0).device.type)  # the device factory functions use now
        return init(self, *args, **kwargs)

    return counted


def test_missing_corrupt_and_pickled_model_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a convvae model file"):
        load_model(corrupt)
    # A pickled object (arbitrary code on load) is refused by weights_only=True.
    pickled = tmp_path / "pickled.pt"
    torch.save({"architecture": Architecture(), "state_dict": {}}, pickled)
    with pytest.raises(CheckpointError):
        load_model(pickled)
