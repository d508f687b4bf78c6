"""convvae.benchmark.report on the pipeline's committed benchmark outputs
(metrics/benchmark/class_*.json).

The committed class files may predate the peers (no ``peers``, no ``seconds``); tests that need
peers add synthetic ones (:func:`with_peers`), so they hold for both formats.
"""

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from convvae.anomaly.scores import SCORES
from convvae.benchmark.ablations import VAE_FREE
from convvae.benchmark.differences import (
    difference_summary,
    margin_over_vae_free,
    mean_differences,
)
from convvae.benchmark.published import published_results
from convvae.benchmark.report import (
    ABLATION_TITLES,
    METHOD_TITLES,
    METRIC_KEYS,
    PEER_TITLES,
    SCORE_TITLES,
    ReportContext,
    class_methods,
    render_report,
    summarize,
)
from convvae.benchmark.report_figures import save_methods_figure, save_roc_figure
from convvae.config import parse_params

REPO = Path(__file__).resolve().parents[1]
BENCHMARK_METRICS = REPO / "metrics" / "benchmark"
REPORT = "reports/anomaly.md"
SUMMARY = "metrics/benchmark_summary.json"
PRIMARY = "excess_nll"
METHODS_FIGURE = "anomaly_methods.png"


def committed_per_class() -> dict[int, dict]:
    """Normal class -> its committed metrics, in class order."""
    files = sorted(BENCHMARK_METRICS.glob("class_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    assert files, f"no class_*.json under {BENCHMARK_METRICS}"
    per_class = {}
    for path in files:
        metrics = json.loads(path.read_text())
        per_class[metrics["normal_class"]] = metrics
    return per_class


def with_peers(per_class: dict[int, dict]) -> dict[int, dict]:
    """A copy of ``per_class`` in the benchmark's new format: every class gets a ``peers`` entry
    for each of PEER_TITLES (a real score's metrics dict with other numbers) and every method a
    ``seconds``; any peers or seconds already there are replaced. Keys are sorted, as in the
    benchmark's JSON files (so tables list methods in that order)."""
    out = copy.deepcopy(per_class)
    for c, metrics in out.items():
        for i, score in enumerate(metrics["scores"]):
            metrics["scores"][score]["seconds"] = 3.0 + 0.5 * i + 0.25 * c
        template = metrics["scores"][SCORES[0]]
        peers = {}
        for i, peer in enumerate(sorted(PEER_TITLES)):
            auc = 0.55 + 0.07 * i + 0.013 * c
            fit, score_time = 0.2 + 1.5 * i + 0.05 * c, 0.1 + 0.01 * c
            peers[peer] = {
                **template,
                "roc_auc": auc,
                "roc_auc_ci_low": auc - 0.021,
                "roc_auc_ci_high": auc + 0.017,
                "average_precision": 0.9 + 0.01 * i - 0.002 * c,
                "normal_flagged_at_95_recall": 0.6 - 0.1 * i + 0.01 * c,
                "anomalies_passed_at_95_normal": 0.5 - 0.1 * i + 0.01 * c,
                "f1": 0.4 + 0.05 * i + 0.003 * c,
                "fit_seconds": fit,
                "score_seconds": score_time,
                "seconds": fit + score_time,
            }
        metrics["peers"] = peers
    return out


@pytest.fixture(scope="module")
def per_class() -> dict[int, dict]:
    return committed_per_class()


@pytest.fixture(scope="module")
def per_class_peers(per_class) -> dict[int, dict]:
    return with_peers(per_class)


def context_for(data_source: str, max_train_images: int | None = None) -> ReportContext:
    return ReportContext(
        data_source=data_source,
        val_fraction=0.1,
        target_fpr=0.05,
        iwae_samples=32,
        bootstrap_resamples=1000,
        max_train_images=max_train_images,
        primary_score=PRIMARY,
        scores=SCORES,
        roc_figure_name="anomaly_roc.png",
        methods_figure_name=METHODS_FIGURE,
    )


def summary_with_differences(per_class: dict[int, dict], default: str, seeds: int = 1) -> dict:
    """summarize(), plus the mean differences as the report stage adds them, from stand-in
    replicates (every resample at the class's own ROC-AUC: intervals of zero width)."""
    summary = summarize(per_class, "mnist-5k", seeds=seeds, default_score=default)
    replicates = {
        c: {name: np.full(20, m["roc_auc"]) for name, m in class_methods(metrics).items()}
        for c, metrics in per_class.items()
    }
    return summary | difference_summary(mean_differences(per_class, replicates, default))


def render(per_class: dict[int, dict], context: ReportContext) -> str:
    summary = summary_with_differences(per_class, context.primary_score)
    return render_report(context, per_class, summary)


def methods_of(per_class: dict[int, dict]) -> list[str]:
    return list(class_methods(next(iter(per_class.values()))))


def test_summarize_means_are_the_means_over_classes(per_class):
    summary = summarize(per_class, "mnist-5k", seeds=1, default_score=PRIMARY)
    assert summary["data_source"] == "mnist-5k"
    assert summary["classes"] == len(per_class)
    assert summary["seeds"] == 1
    assert summary["default_score"] == PRIMARY
    methods = methods_of(per_class)
    assert set(SCORES) <= set(methods)
    for method in methods:
        for key in METRIC_KEYS:
            values = [class_methods(metrics)[method][key] for metrics in per_class.values()]
            assert summary[f"{method}.{key}_mean"] == pytest.approx(np.mean(values), abs=1e-12)
    timed = [m for m in methods if "seconds" in class_methods(per_class[0])[m]]
    for method in timed:
        values = [class_methods(metrics)[method]["seconds"] for metrics in per_class.values()]
        assert summary[f"{method}.seconds_per_class"] == pytest.approx(np.mean(values))
    assert len(summary) == 4 + len(methods) * len(METRIC_KEYS) + len(timed)


def test_summarize_covers_the_peers_and_their_seconds(per_class_peers):
    summary = summarize(per_class_peers, "mnist-5k", seeds=3, default_score="iwae_nll")
    assert summary["seeds"] == 3
    assert summary["default_score"] == "iwae_nll"
    methods = methods_of(per_class_peers)
    ablations_run = next(iter(per_class_peers.values())).get("ablations", {})
    assert sorted(methods) == sorted([*SCORES, *PEER_TITLES, *ablations_run])
    for method in methods:
        by_class = [class_methods(metrics)[method] for metrics in per_class_peers.values()]
        for key in METRIC_KEYS:
            expected = np.mean([m[key] for m in by_class])
            assert summary[f"{method}.{key}_mean"] == pytest.approx(expected, abs=1e-12)
        expected_seconds = np.mean([m["seconds"] for m in by_class])
        assert summary[f"{method}.seconds_per_class"] == pytest.approx(expected_seconds)
    # fit_seconds and score_seconds are per-class details, not summarised
    assert not [key for key in summary if "fit_seconds" in key or "score_seconds" in key]
    assert len(summary) == 4 + len(methods) * (len(METRIC_KEYS) + 1)


def roc_auc_row(per_class: dict[int, dict], method: str, title: str) -> str:
    by_class = [class_methods(metrics)[method] for metrics in per_class.values()]
    values = [100 * m["roc_auc"] for m in by_class]
    timed = [m["seconds"] for m in by_class if "seconds" in m]
    seconds = f"{np.mean(timed):.1f}" if timed else ""  # blank for files without timings
    cells = " | ".join(f"{value:.1f}" for value in values)
    return f"| {title} | {cells} | {np.mean(values):.1f} | {seconds} |"


@pytest.mark.parametrize("peers", [False, True], ids=["committed", "with-peers"])
def test_render_has_a_roc_auc_row_per_method(per_class, per_class_peers, peers):
    data = per_class_peers if peers else per_class
    markdown = render(data, context_for("mnist-5k"))
    lines = markdown.splitlines()
    assert "## ROC-AUC (%), every method on the same images" in lines
    classes = " | ".join(str(c) for c in data)
    head = lines.index(f"| method | {classes} | mean | s/class |")
    assert lines[head + 1] == "|---" * (len(data) + 3) + "|"
    methods = methods_of(data)
    first = next(iter(data.values()))
    # ours in SCORES' order, then the peers in PEER_TITLES' order and the ablations in
    # ABLATION_TITLES' order (the files are key-sorted)
    peers_run, ablations_run = first.get("peers", {}), first.get("ablations", {})
    assert methods == [
        *SCORES,
        *(p for p in PEER_TITLES if p in peers_run),
        *(a for a in ABLATION_TITLES if a in ablations_run),
    ]
    assert sorted(first["scores"]) == sorted(SCORES)
    if peers:  # the synthetic copy has every peer
        assert sorted(peers_run) == sorted(PEER_TITLES)
    rows = []
    for method in methods:
        title = METHOD_TITLES[method]
        if method == PRIMARY:
            title = f"**{title}**"
        rows.append(roc_auc_row(data, method, title))
    # one row per method, in order (ours, then the peers), right after the header
    assert lines[head + 2 : head + 2 + len(rows)] == rows
    assert sum(line.startswith("| **") for line in lines) == 1, "only the default is bold"


def test_render_roc_auc_table_quotes_the_peers_means_and_seconds(per_class_peers):
    markdown = render(per_class_peers, context_for("mnist-5k"))
    for i, peer in enumerate(sorted(PEER_TITLES)):
        title = PEER_TITLES[peer]
        by_class = [metrics["peers"][peer] for metrics in per_class_peers.values()]
        mean = np.mean([100 * m["roc_auc"] for m in by_class])
        seconds = np.mean([m["seconds"] for m in by_class])
        # the synthetic numbers: auc 55 + 7 i + 1.3 c %, seconds 0.3 + 1.5 i + 0.06 c
        assert mean == pytest.approx(55 + 7 * i + 1.3 * np.mean(list(per_class_peers)))
        assert f"| {mean:.1f} | {seconds:.1f} |" in markdown
        assert roc_auc_row(per_class_peers, peer, title) in markdown
    primary = roc_auc_row(per_class_peers, PRIMARY, f"**{SCORE_TITLES[PRIMARY]}**")
    assert primary in markdown


def test_render_bold_row_follows_the_primary_score(per_class_peers):
    context = dataclasses.replace(context_for("mnist-5k"), primary_score="neg_elbo")
    markdown = render(per_class_peers, context)
    assert roc_auc_row(per_class_peers, "neg_elbo", "**negative ELBO**") in markdown
    assert f"| **{SCORE_TITLES[PRIMARY]}** |" not in markdown
    assert f"| {SCORE_TITLES[PRIMARY]} |" in markdown
    assert "## Per class, score `neg_elbo`" in markdown


def test_render_links_the_methods_figure_only_with_peers(per_class, per_class_peers):
    link = f"![Mean ROC-AUC per method]({METHODS_FIGURE})"
    assert link in render(per_class_peers, context_for("mnist-5k"))
    other = dataclasses.replace(context_for("mnist-5k"), methods_figure_name="bars.png")
    assert "![Mean ROC-AUC per method](bars.png)" in render(per_class_peers, other)
    without = {c: {k: v for k, v in m.items() if k != "peers"} for c, m in per_class.items()}
    assert "![Mean ROC-AUC per method]" not in render(without, context_for("mnist-5k"))


@pytest.mark.parametrize("peers", [False, True], ids=["committed", "with-peers"])
def test_render_has_a_bootstrap_row_per_method(per_class, per_class_peers, peers):
    data = per_class_peers if peers else per_class
    markdown = render(data, context_for("mnist-5k"))
    for method in methods_of(data):
        by_class = [class_methods(metrics)[method] for metrics in data.values()]
        cells = " | ".join(
            f"{100 * m['roc_auc_ci_low']:.1f}–{100 * m['roc_auc_ci_high']:.1f}" for m in by_class
        )
        title = METHOD_TITLES[method]
        assert f"| {title} | {cells} | |" in markdown


def test_render_per_class_table_uses_the_primary_means(per_class_peers):
    markdown = render(per_class_peers, context_for("mnist-5k"))
    means = {
        key: np.mean([m["scores"][PRIMARY][key] for m in per_class_peers.values()])
        for key in METRIC_KEYS
    }
    assert (
        f"| mean | {means['roc_auc']:.3f} | {means['average_precision']:.3f} | "
        f"{means['average_precision_in']:.3f} | {means['normal_flagged_at_95_recall']:.3f} | "
        f"{means['anomalies_passed_at_95_normal']:.3f} | | "
        f"{means['realised_fpr']:.3f} | {means['f1']:.3f} | |"
    ) in markdown
    assert f"![ROC curves per normal class, score {PRIMARY}](anomaly_roc.png)" in markdown


@pytest.mark.parametrize("peers", [False, True], ids=["committed", "with-peers"])
def test_render_quotes_the_published_rows_and_the_protocol_warning(
    per_class, per_class_peers, peers
):
    markdown = render(per_class_peers if peers else per_class, context_for("mnist-5k"))
    rows = published_results("mnist-5k")
    assert rows == published_results("mnist")
    assert rows, "mnist-5k should reuse mnist's published rows"
    for row in rows:
        assert f"| {row.method} | " in markdown
        assert f" | {row.source} |" in markdown
        if row.per_class is not None:
            cells = " | ".join(f"{value:.1f}" for value in row.per_class)
            assert f"| {row.method} | {cells} | {row.mean:.1f} | {row.source} |" in markdown
    assert "## Published ROC-AUC (%), standard one-class protocol" in markdown
    assert "**Different protocol from the published rows below.**" in markdown
    assert "**Capped data**" not in markdown


def test_render_warns_about_capped_data_only_when_capped(per_class):
    markdown = render(per_class, context_for("mnist-5k", max_train_images=500))
    assert "**Capped data** (`data.max_train_images: 500`)" in markdown
    assert "**Capped data**" not in render(per_class, context_for("mnist-5k"))


def test_render_has_no_published_section_without_published_rows(per_class_peers):
    assert published_results("cifar-10") == []
    markdown = render(per_class_peers, context_for("cifar-10"))
    assert "## Published" not in markdown
    assert "Different protocol" not in markdown
    assert "## ROC-AUC (%), every method on the same images" in markdown


def test_fashion_mnist_published_rows_match_their_quoted_means():
    rows = {row.method.split(" ")[0]: row for row in published_results("fashion-mnist")}
    for method in ("GEOM", "ARNet"):
        assert len(rows[method].per_class) == 10
        assert np.mean(rows[method].per_class) == pytest.approx(rows[method].mean, abs=0.1)


@pytest.mark.parametrize("data_source", ["mnist", "fashion-mnist"])
def test_every_published_row_is_well_formed(data_source):
    for row in published_results(data_source):
        if row.per_class is None:
            assert isinstance(row.mean, str), row.method  # quoted with its spread
        else:
            assert len(row.per_class) == 10, row.method
            assert np.mean(row.per_class) == pytest.approx(row.mean, abs=0.1), row.method


def test_save_roc_figure_writes_a_png_atomically(per_class, tmp_path):
    curves = {
        c: [{"fpr": 0.0, "tpr": 0.0}, {"fpr": 0.1, "tpr": 0.8}, {"fpr": 1.0, "tpr": 1.0}]
        for c in per_class
    }
    path = tmp_path / "figures" / "roc.png"
    save_roc_figure(curves, PRIMARY, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in path.parent.iterdir()] == ["roc.png"]


@pytest.mark.parametrize("peers", [False, True], ids=["committed", "with-peers"])
def test_save_methods_figure_writes_a_png_atomically(per_class, per_class_peers, peers, tmp_path):
    data = per_class_peers if peers else per_class
    summary = summarize(data, "mnist-5k", seeds=1, default_score=PRIMARY)
    path = tmp_path / "figures" / METHODS_FIGURE
    save_methods_figure(summary, PRIMARY, path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in path.parent.iterdir()] == [METHODS_FIGURE]


def committed_run(stages: dict) -> dict:
    """The dvc.lock entry of the stage that wrote the committed report."""
    for stage in stages.values():
        if any(out["path"] == REPORT for out in stage.get("outs", [])):
            return stage
    pytest.fail(f"dvc.lock has no stage with output {REPORT}")


def assert_committed_as_locked(path: str, stages: dict) -> None:
    """The committed file is the one dvc.lock recorded, so inputs and report are of one run."""
    locked = [
        out["md5"] for s in stages.values() for out in s.get("outs", []) if out["path"] == path
    ]
    actual = hashlib.md5((REPO / path).read_bytes()).hexdigest()
    assert locked == [actual], f"{path} differs from dvc.lock: commit the outputs of one dvc repro"


def test_render_reproduces_the_committed_report():
    stages = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    run = committed_run(stages)
    params = run["params"]["params.yaml"]
    for normal_class in params["benchmark"]["classes"]:
        assert_committed_as_locked(f"metrics/benchmark/class_{normal_class}.json", stages)
    assert_committed_as_locked(REPORT, stages)
    if "anomaly" not in params:
        pytest.fail(
            "dvc.lock's benchmark_report predates the `anomaly:` params section (and the "
            "current renderer): run `dvc repro benchmark_report` and commit its outputs"
        )
    figures = [Path(out["path"]).name for out in run["outs"] if out["path"].endswith(".png")]
    roc_figure = next(name for name in figures if "roc" in name)
    methods_figure = next((name for name in figures if "methods" in name), METHODS_FIGURE)
    data, anomaly, benchmark = params["data"], params["anomaly"], params["benchmark"]
    # `auto` resolves per data source, as the stage resolved it when it read params.yaml.
    primary = parse_params(params).anomaly.score
    context = dataclasses.replace(
        context_for(data["source"], data["max_train_images"]),
        val_fraction=data["val_fraction"],
        target_fpr=anomaly["target_fpr"],
        iwae_samples=anomaly["samples"],
        bootstrap_resamples=benchmark["bootstrap_resamples"],
        primary_score=primary,
        roc_figure_name=roc_figure,
        methods_figure_name=methods_figure,
    )
    all_classes = committed_per_class()
    per_class = {c: all_classes[c] for c in benchmark["classes"]}
    summary = summarize(per_class, data["source"], benchmark["seeds"], default_score=primary)
    # The mean differences come from the class stages' replicates (DVC outputs, not in git):
    # the committed summary, written by the same run, holds them.
    assert_committed_as_locked(SUMMARY, stages)
    committed_summary = json.loads((REPO / SUMMARY).read_text())
    summary |= {k: v for k, v in committed_summary.items() if k.startswith("diff.")}
    summary |= margin_over_vae_free(summary, VAE_FREE)
    assert render_report(context, per_class, summary) == (REPO / REPORT).read_text("utf-8")


def test_several_seeds_add_the_spread_over_seeds_beside_the_bootstrap(per_class_peers):
    one_seed = render(per_class_peers, context_for("mnist-5k"))
    assert "Student-t" not in one_seed  # one seed has no spread to show
    three = copy.deepcopy(per_class_peers)
    for c, metrics in three.items():
        metrics["seeds"] = 3
        for m in class_methods(metrics).values():
            m.update(
                roc_auc_seed_sd=0.001 * (c + 1),
                roc_auc_seed_ci_low=m["roc_auc"] - 0.002,
                roc_auc_seed_ci_high=m["roc_auc"] + 0.003,
            )
    report = render(three, context_for("mnist-5k"))
    table = report.split("Over the 3 seeds")[1].split("\n\n")[1].splitlines()
    methods = class_methods(three[0])
    assert len(table) == 2 + len(methods)  # header, rule, one row per method
    first = methods[next(iter(methods))]
    low, high = 100 * first["roc_auc"] - 0.2, 100 * first["roc_auc"] + 0.3
    assert f"| 0.10 ({low:.1f}–{high:.1f}) |" in table[2]
    assert table[2].endswith("| 0.55 |")  # mean of 0.1 .. 1.0 points


def test_the_difference_table_has_a_row_per_other_method_with_its_interval(per_class):
    """Against every other method: per-class differences (* where the class's interval excludes
    0) and the mean over classes with its interval."""
    data = copy.deepcopy(per_class)
    for metrics in data.values():  # as a class stage measured them from the default
        metrics["default_score"] = PRIMARY
        aucs = {name: m["roc_auc"] for name, m in class_methods(metrics).items()}
        metrics["differences"] = {
            name: {"difference": aucs[PRIMARY] - auc, "ci_low": 0.01, "ci_high": 0.02}
            for name, auc in aucs.items()
            if name != PRIMARY
        }
    report = render(data, context_for("mnist-5k"))
    table = report.split("minus each method")[1].split("\n\n")[1].splitlines()
    others = [m for m in methods_of(data) if m != PRIMARY]
    assert len(table) == 2 + len(others)
    first = others[0]
    mean = np.mean([m["differences"][first]["difference"] for m in data.values()])
    assert table[2].startswith(f"| {SCORE_TITLES.get(first, first)} |")
    assert f"| {100 * mean:+.1f}" in table[2] and "*" in table[2]
    # Measured from another score than the report's default: no table rather than a wrong one.
    other_default = dataclasses.replace(context_for("mnist-5k"), primary_score="iwae_nll")
    assert "minus each method" not in render(data, other_default)


def test_the_margin_is_over_the_best_vae_free_method_and_the_report_says_where_it_lies(
    per_class_peers,
):
    """vae_free_best: the VAE-free method with the highest mean ROC-AUC (PyOD's VAE is a trained
    VAE, so never); its difference and interval are copied; the report's sentence follows the
    interval's sign."""
    summary = summary_with_differences(per_class_peers, PRIMARY)
    measured = [m for m in VAE_FREE if f"diff.{m}.roc_auc_mean" in summary]
    assert "pyod_vae" in methods_of(per_class_peers) and "pyod_vae" not in VAE_FREE
    margin = margin_over_vae_free(summary, VAE_FREE)
    best = margin["vae_free_best"]
    assert summary[f"{best}.roc_auc_mean"] == max(summary[f"{m}.roc_auc_mean"] for m in measured)
    for part in ("roc_auc_mean", "ci_low", "ci_high"):
        assert margin[f"margin_over_vae_free.{part}"] == summary[f"diff.{best}.{part}"]
    assert margin_over_vae_free(summary, ("pyod_vae_is_not_here",)) == {}
    context = context_for("mnist-5k")
    for (low, high), verdict in {
        (0.01, 0.02): "above it beyond resampling noise",
        (-0.02, -0.01): "below it beyond resampling noise",
        (-0.01, 0.02): "not apart from it",
    }.items():
        data = copy.deepcopy(per_class_peers)
        for metrics in data.values():
            metrics["default_score"] = PRIMARY
            metrics["differences"] = {
                m: {"difference": 0.0, "ci_low": low, "ci_high": high}
                for m in class_methods(metrics)
                if m != PRIMARY
            }
        found = (
            summary
            | margin
            | {
                "margin_over_vae_free.ci_low": low,
                "margin_over_vae_free.ci_high": high,
            }
        )
        report = render_report(context, data, found)
        line = next(t for t in report.splitlines() if t.startswith("Margin over the best"))
        assert METHOD_TITLES.get(best, best) in line and line.endswith(f"{verdict}.")
