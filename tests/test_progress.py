"""Stage step progress: one line per step with its seconds; no bar when stderr is not a
terminal (DVC logs and CI)."""

import time

import pytest

from convvae.runtime.progress import StageSteps


def test_each_step_logs_its_seconds_and_logs_get_no_bar(capsys):
    lines = []
    steps = StageSteps("evaluate", ["figures", "export"], log=lines.append)
    with steps.step("figures"):
        time.sleep(0.05)
    with steps.step("export"):
        pass
    assert [line.split(" in ")[0] for line in lines] == ["evaluate: figures", "evaluate: export"]
    assert steps.seconds["figures"] >= 0.05 > steps.seconds["export"]
    assert lines[0] == f"evaluate: figures in {steps.seconds['figures']:.1f} s"
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal


def test_an_unknown_step_is_refused_before_it_runs():
    steps = StageSteps("evaluate", ["figures"], log=lambda line: None)
    ran = []
    with pytest.raises(ValueError, match="unknown step 'figurs'"), steps.step("figurs"):
        ran.append(True)
    assert not ran and steps.seconds == {}


def test_a_failing_step_raises_its_error_and_logs_no_seconds():
    lines = []
    steps = StageSteps("evaluate", ["export"], log=lines.append)
    with pytest.raises(RuntimeError, match="exporter failed"), steps.step("export"):
        raise RuntimeError("exporter failed")
    assert lines == [] and steps.seconds == {}


def test_a_skipped_step_logs_why_and_records_no_seconds():
    lines = []
    steps = StageSteps("evaluate", ["figures", "MLflow"], log=lines.append)
    with steps.step("figures"):
        pass
    steps.skip("MLflow", "tracking.enabled is false")
    assert lines[1] == "evaluate: MLflow skipped: tracking.enabled is false"
    assert "MLflow" not in steps.seconds and steps.skipped == {"MLflow"}
    with pytest.raises(ValueError, match="unknown step 'MLflo'"):
        steps.skip("MLflo", "typo")


def test_a_step_runs_or_is_skipped_once():
    steps = StageSteps("evaluate", ["figures", "MLflow"], log=lambda line: None)
    with steps.step("figures"):
        pass
    with pytest.raises(ValueError, match="'figures' of evaluate has already run"):
        steps.skip("figures", "twice")
    steps.skip("MLflow", "tracking.enabled is false")
    with pytest.raises(ValueError, match="already run or been skipped"), steps.step("MLflow"):
        pass
    assert steps.skipped == {"MLflow"} and set(steps.seconds) == {"figures"}
