"""convvae.config: params.yaml → frozen dataclasses, and one-line ConfigErrors that name the key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from convvae.config import (
    DataConfig,
    EvaluateConfig,
    ModelConfig,
    Params,
    TrackingConfig,
    TrainConfig,
    load_params,
    load_tracking,
    parse_params,
    size_pair,
)
from convvae.errors import ConfigError, ConvVAEError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
# Every section of Params, in declaration order.
SECTIONS = {f.name: typing.get_type_hints(Params)[f.name] for f in dataclasses.fields(Params)}
# Keys where the repository's params.yaml deliberately departs from the dataclass defaults.
REPO_OVERRIDES = {"train.epochs"}


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def one_line_error(parse: Any, source: Any) -> str:
    """The message of the ConfigError that ``parse(source)`` raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        parse(source)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def config_error(raw: Any) -> str:
    return one_line_error(parse_params, raw)


def load_error(path: Path) -> str:
    return one_line_error(load_params, path)


def write(tmp_path: Path, text: str, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the repository's params.yaml and the defaults ------------------------------------------------


def test_repo_params_file_loads_and_matches_defaults_except_known_overrides() -> None:
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    defaults = Params()
    differing = {
        f"{section}.{name}"
        for section in SECTIONS
        for name in field_names(SECTIONS[section])
        if getattr(getattr(params, section), name) != getattr(getattr(defaults, section), name)
    }
    assert differing == REPO_OVERRIDES
    assert params.train.epochs == 45  # the budget README "Training" measures


def test_benchmark_training_is_train_with_the_overrides_applied() -> None:
    """Every key of `train` reaches the class models unless benchmark.train replaces it (the
    old benchmark silently dropped optimizer, weight_decay, lr_schedule, warm-up and clipping)."""
    params = parse_params(
        {
            "train": {
                "optimizer": "adamw",
                "weight_decay": 0.01,
                "lr_schedule": "cosine",
                "kl_warmup_epochs": 2,
                "grad_clip_norm": 5.0,
                "seed": 7,
                "epochs": 30,
            },
            "benchmark": {"train": {"epochs": 4, "lr": 0.002}},
        }
    )
    expected = dataclasses.replace(params.train, epochs=4, lr=0.002, seed=9)
    assert params.benchmark_train(seed_offset=2) == expected
    assert parse_params({}).benchmark_train() == dataclasses.replace(
        TrainConfig(), epochs=14, batch_size=64
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochz": 3}, "unknown key benchmark.train.epochz; known keys in benchmark.train:"),
        ({"lr": 5}, "benchmark.train.lr must be between 0 and 1"),
        ({"optimizer": "sgd"}, "benchmark.train.optimizer must be one of adam, adamw"),
        ({"min_steps": 0}, "benchmark.train.min_steps must be >= 1 or null"),
        ([1, 2], "benchmark.train must be a mapping"),
    ],
)
def test_bad_benchmark_overrides_are_one_line_errors(overrides, message) -> None:
    assert message in config_error({"benchmark": {"train": overrides}})


def test_repo_params_file_spells_out_every_key() -> None:
    # DVC tracks params by key, and check-params documents the file: every option is listed.
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    assert list(raw) == list(SECTIONS)
    for section, cls in SECTIONS.items():
        assert set(raw[section]) == set(field_names(cls)), section


def test_defaults() -> None:
    params = Params()
    assert params.data == DataConfig(
        source="mnist-5k",
        path=None,
        val_fraction=0.1,
        test_fraction=0.2,
        max_train_images=None,
        seed=0,
    )
    assert params.model.preset == "default"
    assert params.model.beta == 1.0
    assert all(
        getattr(params.model, key) is None
        for key in ("channels", "kernel_size", "encoder_hidden", "decoder_hidden", "latent_dim")
    )
    assert params.train.epochs == 20
    assert params.train.batch_size == 128
    assert params.train.optimizer == "adam"
    assert params.train.lr == 1e-3
    assert params.train.weight_decay == 0.0
    assert params.train.lr_schedule == "none"
    assert params.train.kl_warmup_epochs == 0
    assert params.train.grad_clip_norm is None
    assert params.train.early_stopping_patience == 5
    assert params.train.device == "auto"
    assert params.evaluate == EvaluateConfig(iwae_samples=64, grid_images=64)


def test_empty_mapping_gives_defaults() -> None:
    assert parse_params({}) == Params()
    assert parse_params({"train": {}, "model": {}}) == Params()


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    assert load_params(write(tmp_path, text)) == Params()


def test_partial_section_keeps_other_defaults(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, "train:\n  lr: 0.01\n  optimizer: adamw\n"))
    assert params.train == dataclasses.replace(TrainConfig(), lr=0.01, optimizer="adamw")
    assert params.data == DataConfig()
    # likelihood: auto resolves per data source when the file is read.
    assert params.model == ModelConfig(likelihood="bernoulli")
    assert params.evaluate == EvaluateConfig()


def test_params_are_frozen() -> None:
    params = Params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.lr = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train = TrainConfig()  # type: ignore[misc]


def test_to_dict_round_trips() -> None:
    params = parse_params(
        {
            "data": {"source": "fashion-mnist", "path": "/data/fm", "max_train_images": 100},
            "model": {"channels": [8, 16], "kernel_size": 3, "latent_dim": 4, "beta": 0.5},
            "train": {"grad_clip_norm": 5, "early_stopping_patience": None, "device": "cpu"},
            "evaluate": {"iwae_samples": 8},
        }
    )
    as_dict = params.to_dict()
    assert as_dict["model"]["channels"] == [8, 16]
    assert as_dict["train"]["grad_clip_norm"] == 5.0
    assert parse_params(as_dict) == params
    assert parse_params(yaml.safe_load(yaml.safe_dump(as_dict))) == params


def test_config_error_is_a_convvae_error() -> None:
    assert issubclass(ConfigError, ConvVAEError)


# --- unknown keys ------------------------------------------------------------------------------


def test_unknown_top_level_key_is_named_with_known_keys() -> None:
    message = config_error({"trian": {"lr": 0.01}})
    assert "unknown key trian" in message
    assert "known keys in the top level: data, model, train, evaluate" in message


@pytest.mark.parametrize(
    ("section", "key"),
    [("train", "lrr"), ("data", "sead"), ("model", "latent"), ("evaluate", "samples")],
)
def test_unknown_key_in_section_is_named_with_known_keys(section: str, key: str) -> None:
    message = config_error({section: {key: 1}})
    assert f"unknown key {section}.{key};" in message
    assert f"known keys in {section}: {', '.join(field_names(SECTIONS[section]))}" in message


def test_unknown_key_from_file_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 0.01\n  lrr: 0.02\n")
    message = load_error(path)
    assert message.startswith(f"{path}: unknown key train.lrr;")
    assert "lr, weight_decay" in message


def test_parse_params_prefixes_source() -> None:
    with pytest.raises(ConfigError, match=r"^exp\.yaml: train\.lr must be between 0 and 1$"):
        parse_params({"train": {"lr": 0}}, source="exp.yaml")
    assert config_error({"train": {"lr": 0}}).startswith("params: train.lr")


def test_several_unknown_keys_of_mixed_types_are_a_config_error(tmp_path: Path) -> None:
    # YAML 1.1 reads the key `yes` as the boolean True; mixed with a string key, this must still
    # be a ConfigError naming an unknown key (not a TypeError from sorting True and 'extra').
    path = write(tmp_path, "yes: 1\nextra: 2\n")
    message = load_error(path)
    assert "unknown key" in message
    assert "known keys in the top level" in message


# --- wrong types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # string where an int is expected
        ({"train": {"epochs": "ten"}}, "train.epochs must be an integer, got 'ten'"),
        ({"evaluate": {"iwae_samples": "64"}}, "evaluate.iwae_samples must be an integer"),
        # bool where an int is expected (bool is an int subclass in Python)
        ({"train": {"batch_size": True}}, "train.batch_size must be an integer, got True"),
        ({"data": {"seed": False}}, "data.seed must be an integer, got False"),
        ({"data": {"max_train_images": True}}, "data.max_train_images must be an integer"),
        # float where an int is expected
        ({"train": {"epochs": 2.5}}, "train.epochs must be an integer, got 2.5"),
        ({"model": {"latent_dim": 1.5}}, "model.latent_dim must be an integer, got 1.5"),
        # list expected
        ({"model": {"channels": 32}}, "model.channels must be a list, got 32"),
        ({"model": {"encoder_hidden": "512"}}, "model.encoder_hidden must be a list, got '512'"),
        ({"model": {"channels": [32, "64"]}}, "model.channels[1] must be an integer, got '64'"),
        ({"model": {"decoder_hidden": [1.5]}}, "model.decoder_hidden[0] must be an integer"),
        # number expected
        ({"train": {"lr": "fast"}}, "train.lr must be a finite number, got 'fast'"),
        ({"train": {"lr": True}}, "train.lr must be a finite number, got True"),
        ({"train": {"lr": [0.1]}}, "train.lr must be a finite number, got [0.1]"),
        ({"train": {"lr": float("nan")}}, "train.lr must be a finite number, got nan"),
        ({"model": {"beta": float("inf")}}, "model.beta must be a finite number, got inf"),
        ({"train": {"grad_clip_norm": "big"}}, "train.grad_clip_norm must be a finite number"),
        # string expected
        ({"data": {"path": 5}}, "data.path must be a string, got 5"),
        # null where the key is not optional
        ({"train": {"lr": None}}, "train.lr must be a finite number, got None"),
        ({"train": {"epochs": None}}, "train.epochs must be an integer, got None"),
        ({"data": {"source": None}}, "data.source must be one of"),
    ],
)
def test_wrong_type_names_the_key(raw: dict, expected: str) -> None:
    assert expected in config_error(raw)


def test_nan_and_inf_from_yaml_are_rejected(tmp_path: Path) -> None:
    assert "train.lr must be a finite number" in load_error(write(tmp_path, "train:\n  lr: .nan\n"))
    assert "model.beta must be a finite number" in load_error(
        write(tmp_path, "model:\n  beta: .inf\n")
    )


# --- Literal choices ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"optimizer": "sgd"}}, "train.optimizer must be one of adam, adamw; got 'sgd'"),
        (
            {"train": {"lr_schedule": "step"}},
            "train.lr_schedule must be one of none, cosine; got 'step'",
        ),
        (
            {"train": {"device": "tpu"}},
            "train.device must be one of auto, cpu, cuda, mps; got 'tpu'",
        ),
        (
            {"data": {"source": "cifar10"}},
            "data.source must be one of mnist-5k, fashion-mnist, mnist, folder; got 'cifar10'",
        ),
        ({"model": {"preset": "big"}}, "model.preset must be one of default, seed; got 'big'"),
        ({"train": {"optimizer": "Adam"}}, "train.optimizer must be one of adam, adamw"),
        ({"train": {"optimizer": 1}}, "train.optimizer must be one of adam, adamw; got 1"),
    ],
)
def test_literal_value_lists_the_choices(raw: dict, expected: str) -> None:
    assert expected in config_error(raw)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "optimizer", "adamw"),
        ("train", "lr_schedule", "cosine"),
        ("train", "device", "mps"),
        ("data", "source", "mnist"),
        ("model", "preset", "seed"),
    ],
)
def test_literal_values_accepted(section: str, key: str, value: str) -> None:
    assert getattr(getattr(parse_params({section: {key: value}}), section), key) == value


def test_literal_none_schedule_from_yaml_is_the_string(tmp_path: Path) -> None:
    # `none` (unlike `null`) is a plain string in YAML and the name of a schedule.
    assert load_params(write(tmp_path, "train:\n  lr_schedule: none\n")).train.lr_schedule == "none"


# --- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"train": {"lr": 0}}, "train.lr must be between 0 and 1"),
        ({"train": {"lr": 1}}, "train.lr must be between 0 and 1"),
        ({"train": {"lr": -0.001}}, "train.lr must be between 0 and 1"),
        ({"train": {"batch_size": 1}}, "train.batch_size must be >= 2"),
        ({"train": {"epochs": 0}}, "train.epochs must be >= 1"),
        ({"train": {"weight_decay": -0.1}}, "train.weight_decay must be >= 0"),
        ({"train": {"kl_warmup_epochs": -1}}, "train.kl_warmup_epochs must be >= 0"),
        ({"train": {"grad_clip_norm": 0}}, "train.grad_clip_norm must be positive or null"),
        ({"train": {"grad_clip_norm": -1.0}}, "train.grad_clip_norm must be positive or null"),
        ({"train": {"early_stopping_patience": 0}}, "train.early_stopping_patience must be >= 1"),
        (
            {"data": {"val_fraction": 0.5, "test_fraction": 0.5}},
            "data.val_fraction plus data.test_fraction must be below 1",
        ),
        (
            {"data": {"val_fraction": 0.6, "test_fraction": 0.7}},
            "data.val_fraction plus data.test_fraction must be below 1",
        ),
        ({"data": {"val_fraction": 0}}, "data.val_fraction must be between 0 and 1"),
        ({"data": {"val_fraction": 1.0}}, "data.val_fraction must be between 0 and 1"),
        ({"data": {"test_fraction": 1}}, "data.test_fraction must be between 0 and 1"),
        ({"data": {"max_train_images": 0}}, "data.max_train_images must be a positive integer"),
        ({"model": {"beta": -0.5}}, "model.beta must be >= 0"),
        ({"model": {"kernel_size": 7}}, "model.kernel_size must be 3, 4 or 5"),
        ({"model": {"kernel_size": 2}}, "model.kernel_size must be 3, 4 or 5"),
        ({"model": {"latent_dim": 0}}, "model.latent_dim must be positive"),
        ({"model": {"latent_dim": -2}}, "model.latent_dim must be positive"),
        ({"model": {"channels": []}}, "model.channels must not be empty"),
        ({"model": {"channels": [16, 0]}}, "model.channels must be a list of positive integers"),
        ({"model": {"encoder_hidden": [-1]}}, "model.encoder_hidden must be a list of positive"),
        ({"model": {"decoder_hidden": [8, 0]}}, "model.decoder_hidden must be a list of positive"),
        ({"evaluate": {"iwae_samples": 0}}, "evaluate.iwae_samples must be >= 1"),
        ({"evaluate": {"grid_images": 0}}, "evaluate.grid_images must be between 1 and 1024"),
        ({"evaluate": {"grid_images": 1025}}, "evaluate.grid_images must be between 1 and 1024"),
    ],
)
def test_out_of_range_names_the_key(raw: dict, expected: str) -> None:
    assert expected in config_error(raw)


def test_boundary_values_accepted() -> None:
    params = parse_params(
        {
            "data": {"val_fraction": 0.4, "test_fraction": 0.59, "max_train_images": 1},
            "model": {"beta": 0, "latent_dim": 1, "encoder_hidden": [], "decoder_hidden": []},
            "train": {
                "epochs": 1,
                "batch_size": 2,
                "lr": 0.999,
                "early_stopping_patience": 1,
                "grad_clip_norm": 1e-6,
            },
            "evaluate": {"iwae_samples": 1, "grid_images": 1024},
        }
    )
    assert params.data.val_fraction + params.data.test_fraction < 1
    assert params.model.beta == 0.0
    assert params.model.encoder_hidden == []
    assert params.train.batch_size == 2
    assert params.evaluate.grid_images == 1024


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_kernel_sizes_accepted(kernel_size: int) -> None:
    assert parse_params({"model": {"kernel_size": kernel_size}}).model.kernel_size == kernel_size


def test_dataclasses_validate_when_built_directly() -> None:
    with pytest.raises(ConfigError, match=r"^train\.lr must be between 0 and 1$"):
        TrainConfig(lr=0.0)
    with pytest.raises(ConfigError, match=r"^model\.kernel_size"):
        ModelConfig(kernel_size=7)


def test_negative_data_seed_is_rejected() -> None:
    # data.seed goes to scikit-learn's train_test_split(random_state=...), which only takes
    # 0 .. 2**32 - 1; an out-of-range seed must fail here, naming the key, not in the data stage.
    assert "data.seed" in config_error({"data": {"seed": -1}})


# --- null, YAML floats, int → float ------------------------------------------------------------


def test_null_accepted_where_optional(tmp_path: Path) -> None:
    text = (
        "data:\n  path: null\n  max_train_images: ~\n"
        "model:\n  channels: null\n  kernel_size: null\n  encoder_hidden: null\n"
        "  decoder_hidden: null\n  latent_dim:\n"
        "train:\n  grad_clip_norm: null\n  early_stopping_patience: null\n"
    )
    params = load_params(write(tmp_path, text))
    assert params.data.path is None
    assert params.data.max_train_images is None
    assert params.model == ModelConfig(likelihood="bernoulli")
    assert params.train.grad_clip_norm is None
    # null switches early stopping off (the default is 5, so this is not just the default).
    assert params.train.early_stopping_patience is None


def test_yaml_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    text = "train:\n  lr: 1e-3\n  weight_decay: 5e-4\n  grad_clip_norm: 1E+1\nmodel:\n  beta: 1e0\n"
    raw = yaml.safe_load(text)
    assert raw["train"]["lr"] == "1e-3"  # PyYAML (YAML 1.1) reads this as a string
    params = load_params(write(tmp_path, text))
    assert params.train.lr == 0.001
    assert params.train.weight_decay == 0.0005
    assert params.train.grad_clip_norm == 10.0
    assert params.model.beta == 1.0
    assert all(
        type(v) is float
        for v in (params.train.lr, params.train.weight_decay, params.train.grad_clip_norm)
    )


def test_yaml_exponent_string_still_range_checked(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "train:\n  lr: 1e1\n"))
    assert "train.lr must be between 0 and 1" in message


def test_exponent_string_is_not_accepted_for_an_int(tmp_path: Path) -> None:
    assert "train.epochs must be an integer" in load_error(
        write(tmp_path, "train:\n  epochs: 1e2\n")
    )


def test_ints_accepted_for_floats_and_converted() -> None:
    params = parse_params(
        {
            "train": {"weight_decay": 0, "grad_clip_norm": 5},
            "model": {"beta": 2},
            "data": {"val_fraction": 0.1},
        }
    )
    for value in (params.train.weight_decay, params.train.grad_clip_norm, params.model.beta):
        assert type(value) is float
    assert params.train.grad_clip_norm == 5.0
    assert params.model.beta == 2.0


def test_ints_stay_ints() -> None:
    params = parse_params({"train": {"epochs": 3}, "model": {"channels": [4, 8]}})
    assert type(params.train.epochs) is int
    assert params.model.channels == [4, 8]
    assert all(type(c) is int for c in params.model.channels)


# --- file-level errors -------------------------------------------------------------------------


def test_malformed_yaml_gives_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  seed: 0\ntrain:\n  lr: 0.01\n epochs: 3\n")
    message = load_error(path)
    assert message.startswith(f"{path}: invalid YAML at line 5")


def test_tab_indentation_gives_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "# comment\ntrain:\n\tlr: 0.1\n")
    assert "invalid YAML at line 3" in load_error(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- data\n- train\n", "the top level must be a mapping of keys to values, got list"),
        ("just a string\n", "the top level must be a mapping of keys to values, got str"),
        ("42\n", "the top level must be a mapping of keys to values, got int"),
        ("train: 5\n", "train must be a mapping of keys to values, got int"),
        ("train:\n  - lr\n", "train must be a mapping of keys to values, got list"),
        ("model: default\n", "model must be a mapping of keys to values, got str"),
        ("data: null\n", "data must be a mapping of keys to values, got NoneType"),
    ],
)
def test_non_mapping_is_an_error(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    message = load_error(path)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "params.yaml"
    message = load_error(path)
    assert str(path) in message
    assert "file not found" in message


def test_directory_is_not_a_params_file(tmp_path: Path) -> None:
    message = load_error(tmp_path)
    assert str(tmp_path) in message
    assert "file not found" in message


def test_load_params_accepts_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epochs: 7\n")
    assert load_params(str(path)).train.epochs == 7


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    # A params file saved as Latin-1 (an accented comment) must be a one-line ConfigError
    # naming the file, not a UnicodeDecodeError traceback.
    path = tmp_path / "params.yaml"
    path.write_bytes("# modèle\ntrain:\n  lr: 0.01\n".encode("latin-1"))
    assert str(path) in load_error(path)


def test_duplicate_keys_are_refused_not_silently_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  lr: 0.1\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="line 3") as err:
        load_params(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["? [data, model]\n: 1\n", "? {a: 1}\n: 2\n", "[a, b]: 1\n"])
def test_a_list_or_mapping_as_a_key_is_one_line(tmp_path: Path, key: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.01\n" + key)
    with pytest.raises(ConfigError, match="line 3: a key must be a name, not a") as err:
        load_params(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("data", "likelihood"),
    [({}, "bernoulli"), ({"source": "fashion-mnist"}, "bernoulli"),
     ({"source": "folder", "path": "images"}, "bernoulli")],
)  # fmt: skip
def test_auto_likelihood_resolves_per_source(data: dict, likelihood: str) -> None:
    assert parse_params({"data": data}).model.likelihood == likelihood
    chosen = parse_params({"data": data, "model": {"likelihood": "discretized_logistic"}})
    assert chosen.model.likelihood == "discretized_logistic"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": "folder"}, "data.path must name the image folder"),
        ({"image_size": 64}, "data.image_size applies to data.source: folder only"),
        ({"source": "folder", "path": "x", "image_size": 4}, "image_size is 4; use null, an"),
        ({"source": "folder", "path": "x", "crop": [8, 7]}, "[8, 7]; use null, an integer >= 8"),
        ({"source": "folder", "path": "x", "crop": [1, 2, 3]}, "data.crop is [1, 2, 3]; use null"),
        (
            {"source": "folder", "path": "x", "channels": 2},
            "data.channels must be one of auto, 1, 3",
        ),
        ({"channels": 3}, "data.channels applies to data.source: folder only"),
    ],
)
def test_folder_options_are_checked(data: dict, message: str) -> None:
    assert message in config_error({"data": data})


def test_image_size_accepts_an_int_or_height_width() -> None:
    square = parse_params({"data": {"source": "folder", "path": "x", "image_size": 64}})
    assert square.data.size_pair("image_size") == (64, 64)
    oblong = parse_params({"data": {"source": "folder", "path": "x", "image_size": [48, 64]}})
    assert oblong.data.size_pair("image_size") == (48, 64)
    assert oblong.data.size_pair("crop") is None


def test_a_model_files_size_record_reads_like_the_config() -> None:
    """`convvae score --resize` reads the preprocessing record through the same parser."""
    assert size_pair([32], "data.crop") == (32, 32)
    assert size_pair((np.int64(48), 64), "data.image_size") == (48, 64)
    for bad in ([0, 4], [1, 2, 3], "64", True, [2.5, 3]):
        with pytest.raises(ConfigError, match=r"use null, an integer >= 1, \[side\] or"):
            size_pair(bad, "data.image_size")


def test_load_tracking_reads_only_its_section(tmp_path: Path) -> None:
    # A models:/ reference needs the store; a params file of another project version (here
    # with a key this version dropped) must not block it.
    path = tmp_path / "params.yaml"
    path.write_text("evaluate:\n  batch_size: 256\ntracking:\n  uri: sqlite:////srv/x.db\n")
    assert load_tracking(path).uri == "sqlite:////srv/x.db"
    with pytest.raises(ConfigError, match="unknown key evaluate.batch_size"):
        load_params(path)
    path.write_text("tracking:\n  timeout_s: 0\n")
    with pytest.raises(ConfigError, match="tracking.timeout_s must be between 1 and 30"):
        load_tracking(path)
    with pytest.raises(ConfigError, match="typo.yaml: file not found"):
        load_tracking(tmp_path / "typo.yaml")
    path.write_text("")
    assert load_tracking(path) == TrackingConfig()


@pytest.mark.parametrize(
    ("uri", "held"),
    [
        ("http://ann:s3cret@mlflow:5000", "a password"),
        ("https://ghp_TOKEN@mlflow.example", "a user name or token before @"),
        ("https://mlflow.example/?access_token=abc", "query parameter 'access_token'"),
        ("postgresql://mlflow:s3cret@db:5432/mlflow", "a password"),
    ],
)
def test_a_secret_in_tracking_uri_is_refused(tmp_path: Path, uri: str, held: str) -> None:
    # params.yaml is recorded in dvc.lock and uploaded with every run: the secret would leak.
    path = tmp_path / "params.yaml"
    path.write_text(f"tracking:\n  uri: {uri}\n")
    with pytest.raises(ConfigError) as err:
        load_tracking(path)
    message = str(err.value)
    assert f"tracking.uri holds {held}" in message and "MLFLOW_TRACKING_URI" in message
    assert "s3cret" not in message and "\n" not in message
    path.write_text("tracking:\n  uri: https://mlflow.example:5000/?view=1\n")
    assert load_tracking(path).uri == "https://mlflow.example:5000/?view=1"
