"""DVC stage `benchmark_report`: every class of the one-class benchmark in one report.

Writes reports/anomaly.md (every method's ROC-AUC per class, ours and the peers, beside
published results with their sources and protocols), the ROC and per-method figures, and the
aggregate metrics (means over classes). Every MLflow call of the benchmark happens here, in one
process (`convvae.tracking.runs`).
"""

from convvae.anomaly.scores import SCORES
from convvae.benchmark.ablations import VAE_FREE
from convvae.benchmark.differences import (
    difference_summary,
    margin_over_vae_free,
    mean_differences,
    read_replicates,
)
from convvae.benchmark.oneclass import NO_CLASSES
from convvae.benchmark.report import (
    ReportContext,
    render_report,
    summarize,
)
from convvae.benchmark.report_figures import (
    save_methods_figure,
    save_roc_figure,
    write_skipped_report,
)
from convvae.config import load_params
from convvae.data.splits import load_prepared
from convvae.errors import run_stage
from convvae.runtime.files import atomic_path, read_json, write_json
from convvae.tracking.runs import benchmark_tracking, log_benchmark
from convvae.tracking.tracker import open_tracker
from pipeline import layout

RERUN_BENCHMARK = "run the benchmark stages (dvc repro benchmark)"


def main() -> None:
    params = load_params(layout.PARAMS)
    if params.data.source == "folder":
        figures = [layout.ANOMALY_ROC_PNG, layout.ANOMALY_METHODS_PNG]
        write_skipped_report(NO_CLASSES, layout.ANOMALY_REPORT, figures)
        write_json({"skipped": NO_CLASSES}, layout.BENCHMARK_SUMMARY)
        print(f"benchmark report: skipped, {NO_CLASSES}")
        return
    per_class = {
        c: read_json(layout.class_files(c).metrics, RERUN_BENCHMARK)
        for c in params.benchmark.classes
    }
    primary = params.anomaly.score
    summary = summarize(per_class, params.data.source, params.benchmark.seeds, primary)
    replicates = {c: read_replicates(layout.class_files(c).replicates) for c in per_class}
    summary |= difference_summary(mean_differences(per_class, replicates, primary))
    summary |= margin_over_vae_free(summary, VAE_FREE)
    roc_curves = {c: read_json(layout.class_files(c).roc, RERUN_BENCHMARK) for c in per_class}
    save_roc_figure(roc_curves, primary, layout.ANOMALY_ROC_PNG)
    save_methods_figure(summary, primary, layout.ANOMALY_METHODS_PNG)
    context = ReportContext(
        data_source=params.data.source,
        val_fraction=params.data.val_fraction,
        target_fpr=params.anomaly.target_fpr,
        iwae_samples=params.anomaly.samples,
        bootstrap_resamples=params.benchmark.bootstrap_resamples,
        max_train_images=params.data.max_train_images,
        primary_score=primary,
        scores=SCORES,
        roc_figure_name=layout.ANOMALY_ROC_PNG.name,
        methods_figure_name=layout.ANOMALY_METHODS_PNG.name,
    )
    with atomic_path(layout.ANOMALY_REPORT) as tmp:
        tmp.write_text(render_report(context, per_class, summary))
    tracker = open_tracker(benchmark_tracking(params))
    if tracker is not None:
        data = load_prepared(layout.PREPARED_SPLITS, layout.MANIFEST)
        reports = [layout.ANOMALY_REPORT, layout.ANOMALY_ROC_PNG, layout.ANOMALY_METHODS_PNG]
        summary.update(
            log_benchmark(tracker, params, per_class, summary, layout.class_files, reports, data)
        )
    write_json(summary, layout.BENCHMARK_SUMMARY)
    print(f"mean ROC-AUC over {len(per_class)} classes:")
    for key, value in summary.items():
        if key.endswith(".roc_auc_mean"):
            print(f"  {key.removesuffix('.roc_auc_mean'):<18} {value:.3f}")
    print(f"report in {layout.ANOMALY_REPORT}")


if __name__ == "__main__":
    run_stage(main)
