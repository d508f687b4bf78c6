"""The `convvae` console script and run_stage: user errors are one `error:` line and exit 2."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convvae.cli.main import main
from convvae.config import Params, load_params, parse_params
from convvae.errors import DEBUG_ENV, CheckpointError, ConfigError, run_stage
from convvae.model.architecture import Architecture
from convvae.model.files import save_model
from convvae.model.vae import ConvVAE, count_parameters

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "convvae"
COMMAND = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "convvae.cli"]
TINY = Architecture(channels=(4,), encoder_hidden=(8,), decoder_hidden=(8,), latent_dim=2)


def convvae(
    *args: str, cwd: Path = REPO, debug_env: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    if debug_env is not None:
        env[DEBUG_ENV] = debug_env
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line `error: ...`; returns that line."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def bad_params(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 0.01\n  lrr: 0.02\n")
    return path


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ConvVAE]:
    torch.manual_seed(0)
    model = ConvVAE(TINY)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(model, path)
    return path, model


# --- check-params ------------------------------------------------------------------------------


def test_check_params_good_file_prints_json_that_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-3\n  epochs: 3\nmodel:\n  channels: [8, 16]\n")
    result = convvae("check-params", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    printed = json.loads(result.stdout)
    assert set(printed) == {
        "data",
        "model",
        "train",
        "evaluate",
        "tracking",
        "anomaly",
        "benchmark",
    }
    assert printed["train"]["lr"] == 0.001
    assert printed["train"]["epochs"] == 3
    assert printed["model"]["channels"] == [8, 16]
    # Resolved: defaults are filled in.
    assert printed["evaluate"]["iwae_samples"] == 64
    assert parse_params(printed) == load_params(path)


def test_check_params_defaults_to_params_yaml_in_cwd() -> None:
    result = convvae("check-params", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert parse_params(json.loads(result.stdout)) == load_params(REPO / "params.yaml")


def test_check_params_empty_file_prints_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    result = convvae("check-params", str(path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == Params().to_dict()


def test_check_params_bad_file_is_one_error_line(bad_params: Path) -> None:
    line = assert_one_line_error(convvae("check-params", str(bad_params)))
    assert line.startswith(f"error: {bad_params}: unknown key train.lrr;")
    assert "known keys in train:" in line


def test_check_params_out_of_range_names_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("model:\n  kernel_size: 7\n")
    line = assert_one_line_error(convvae("check-params", str(path)))
    assert "model.kernel_size must be 3, 4 or 5" in line


def test_check_params_malformed_yaml_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  lr: 0.1\n epochs: 3\n")
    line = assert_one_line_error(convvae("check-params", str(path)))
    assert "invalid YAML at line 3" in line


def test_check_params_missing_file_is_one_error_line(tmp_path: Path) -> None:
    line = assert_one_line_error(convvae("check-params", cwd=tmp_path))
    assert "params.yaml: file not found" in line


def test_debug_flag_shows_traceback(bad_params: Path) -> None:
    result = convvae("--debug", "check-params", str(bad_params))
    assert result.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConfigError" in result.stderr
    assert "train.lrr" in result.stderr


def test_debug_env_shows_traceback(bad_params: Path) -> None:
    result = convvae("check-params", str(bad_params), debug_env="1")
    assert "Traceback (most recent call last)" in result.stderr
    assert "ConfigError" in result.stderr


def test_debug_env_zero_is_off(bad_params: Path) -> None:
    assert_one_line_error(convvae("check-params", str(bad_params), debug_env="0"))


def test_no_subcommand_is_a_usage_error() -> None:
    result = convvae()
    assert result.returncode == 2
    assert "usage: convvae" in result.stderr
    assert "Traceback" not in result.stderr


# --- inspect -----------------------------------------------------------------------------------


def test_inspect_prints_architecture_and_parameter_count(
    tiny_model_file: tuple[Path, ConvVAE],
) -> None:
    path, model = tiny_model_file
    result = convvae("inspect", str(path))
    assert result.returncode == 0, result.stderr
    body, _, last = result.stdout.rstrip("\n").rpartition("\n")
    arch = json.loads(body)
    assert arch == json.loads(json.dumps(dataclasses.asdict(TINY)))
    assert arch["channels"] == [4]
    assert arch["latent_dim"] == 2
    expected = sum(p.numel() for p in model.parameters())
    assert expected == count_parameters(model)
    assert last == f"parameters: {expected:,}"


def test_inspect_missing_file_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "missing.pt"
    line = assert_one_line_error(convvae("inspect", str(path)))
    assert str(path) in line
    assert "model file not found" in line


def test_inspect_corrupt_file_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    line = assert_one_line_error(convvae("inspect", str(path)))
    assert f"{path}: not a convvae model file" in line


def test_inspect_torch_file_without_model_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    line = assert_one_line_error(convvae("inspect", str(path)))
    assert f"{path}: not a convvae model file" in line


def test_inspect_in_process(
    tiny_model_file: tuple[Path, ConvVAE], capsys: pytest.CaptureFixture[str]
) -> None:
    path, model = tiny_model_file
    main(["inspect", str(path)])
    out = capsys.readouterr().out
    assert f"parameters: {count_parameters(model):,}" in out


def test_main_in_process_error_exits_2(bad_params: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        main(["check-params", str(bad_params)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "train.lrr" in err


# --- run_stage ---------------------------------------------------------------------------------


def _raise_config_error() -> None:
    raise ConfigError("train.lr must be between 0 and 1")


def test_run_stage_config_error_exits_2_with_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        run_stage(_raise_config_error)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: train.lr must be between 0 and 1\n"
    assert captured.out == ""


def test_run_stage_other_convvae_errors_exit_2(capsys, monkeypatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def stage() -> None:
        raise CheckpointError("model.pt: model file not found")

    with pytest.raises(SystemExit) as info:
        run_stage(stage)
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: model.pt: model file not found\n"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_run_stage_debug_env_propagates(monkeypatch, capsys, value: str) -> None:
    monkeypatch.setenv(DEBUG_ENV, value)
    with pytest.raises(ConfigError, match="train.lr"):
        run_stage(_raise_config_error)
    assert capsys.readouterr().err == ""


def test_run_stage_debug_env_zero_is_off(monkeypatch) -> None:
    monkeypatch.setenv(DEBUG_ENV, "0")
    with pytest.raises(SystemExit) as info:
        run_stage(_raise_config_error)
    assert info.value.code == 2


def test_run_stage_success_returns_quietly(capsys, monkeypatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    calls = []
    run_stage(lambda: calls.append(1))
    assert calls == [1]
    assert capsys.readouterr() == ("", "")


def test_run_stage_programming_errors_are_not_swallowed(monkeypatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def stage() -> None:
        raise ValueError("a bug, not a user error")

    with pytest.raises(ValueError, match="a bug"):
        run_stage(stage)


def test_run_stage_keyboard_interrupt_exits_130(capsys, monkeypatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def stage() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        run_stage(stage)
    assert info.value.code == 130
    assert capsys.readouterr().err.startswith("interrupted")


def test_a_closed_stdout_pipe_ends_quietly_with_sigpipes_code(tmp_path: Path) -> None:
    # `convvae score ... | head -1`: the reader leaves after one line; no traceback follows.
    program = (
        "from convvae.errors import exit_on_error\n"
        "def endless():\n"
        "    while True:\n"
        "        print('file,score,normalized_score,is_anomaly', flush=True)\n"
        "exit_on_error(endless)\n"
    )
    script = tmp_path / "endless.py"
    script.write_text(program)
    result = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" "{script}" | head -1; echo "rc=${{PIPESTATUS[0]}}"'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.splitlines() == ["file,score,normalized_score,is_anomaly", "rc=141"]
    assert result.stderr == ""


def test_presets_prints_each_sizes_default_architecture():
    from convvae.model.architecture import default_architecture
    from convvae.model.vae import ConvVAE, count_parameters

    result = convvae("presets")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"1x28x28", "3x32x32", "3x64x64", "3x128x128", "3x256x256"}
    for shape in ((1, 28, 28), (3, 64, 64)):
        params = count_parameters(ConvVAE(default_architecture(shape)))
        assert f"{params:,}" in rows["x".join(map(str, shape))]
