"""DVC stage `evaluate`: test-set likelihood (negative ELBO, IWAE) and figures, and the other
uses measured on the test split: sample quality, rate-distortion, imputation (metrics/uses.json).

Writes the model's anomaly threshold (models/threshold.json: the `anomaly` section's score, cut
for its target_fpr on the calibration half of the validation images), read by `convvae score`
and serving, and logs everything into
the MLflow run that `train` opened, registering the model with its threshold.
"""

import sys
from functools import partial

from convvae.anomaly.calibration import (
    calibrate_split_or_cross_fit,
    plan_calibration,
    reachability_warning,
)
from convvae.anomaly.export import export_onnx
from convvae.anomaly.model_card import model_card
from convvae.anomaly.outofdomain import out_of_domain_auroc
from convvae.anomaly.reference import load_fitted_model
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import score_images
from convvae.anomaly.synthetic import synthetic_check
from convvae.benchmark.ablations import defect_ablations
from convvae.benchmark.defects import measure_defects
from convvae.config import load_params
from convvae.data.splits import load_splits, read_manifest
from convvae.errors import run_stage
from convvae.model.architecture import resolve_architecture
from convvae.runtime.files import atomic_path, read_json, write_json
from convvae.runtime.progress import StageSteps
from convvae.tracking.runs import log_evaluation
from convvae.tracking.tracker import open_tracker
from convvae.uses.evaluation import likelihood_metrics, save_figures
from convvae.uses.measure import measure_uses
from pipeline import layout

EVALUATE_STEPS = (
    "likelihoods",
    "figures",
    "generation, compression, imputation",
    "threshold",
    "ONNX export",
    "out-of-domain sets",
    "synthetic anomalies",
    "defects",
    "MLflow",
)


def main() -> None:
    params = load_params(layout.PARAMS)
    cfg = params.evaluate
    tracker = open_tracker(params.tracking)
    splits = load_splits(layout.PREPARED_SPLITS)
    expected = resolve_architecture(params.model, splits.test.images.shape[1:])
    model, reference = load_fitted_model(layout.MODEL, expected=expected)
    class_names = read_manifest(layout.MANIFEST)["class_names"]
    # A folder's defect images are not draws from the data the likelihood models.
    normal = splits.test.labels == 0 if params.data.source == "folder" else slice(None)
    test_images = splits.test.images[normal]
    steps = StageSteps("evaluate", EVALUATE_STEPS)
    with steps.step("likelihoods"):
        metrics = likelihood_metrics(model, test_images, cfg.iwae_samples, cfg.seed)
    with steps.step("figures"):
        save_figures(model, splits.test, class_names, cfg, layout.EVALUATE_PLOTS)
    with steps.step("generation, compression, imputation"):
        uses = measure_uses(model, splits, cfg, layout.EVALUATE_PLOTS, layout.RATE_DISTORTION)
    scorer = Scorer(model, reference, ScoreSpec.from_config(params.anomaly))
    record, defects = detector_steps(steps, params, scorer, splits, test_images, metrics)
    run_id = read_json(layout.MLFLOW_RUN, "re-run the train stage (dvc repro train)")["run_id"]
    if tracker is None:
        steps.skip("MLflow", "tracking.enabled is false")
    elif run_id is None:
        steps.skip("MLflow", "the train stage ran without tracking")
    else:
        with steps.step("MLflow"):
            logged = {**metrics, **uses, "defects": defects}
            example = splits.test.images[:2].astype("float32") / 255
            run_id = log_evaluation(
                tracker, run_id, params, logged, layout.EVALUATE_PLOTS, model, layout.MODEL,
                example, record, layout.MODEL_ONNX, layout.MODEL_CARD,
            )  # fmt: skip
            metrics["mlflow_run_id"] = uses["mlflow_run_id"] = run_id
    write_json(metrics, layout.EVALUATE_METRICS)
    write_json(uses, layout.USES_METRICS)
    write_json(defects, layout.DEFECT_METRICS)
    print(
        f"test -ELBO {metrics['test_neg_elbo']:.2f}, IWAE NLL (k={cfg.iwae_samples}) "
        f"{metrics['test_iwae_nll']:.2f} nats/image"
    )
    if "image_roc_auc" in defects:
        pixel = f", pixel AUPRO {defects['pixel_aupro']:.3f}" if "pixel_aupro" in defects else ""
        print(f"defects: image ROC-AUC {defects['image_roc_auc']:.3f}{pixel}")


def detector_steps(steps, params, scorer, splits, normal_test_images, metrics) -> tuple:
    """The threshold record (written), the ONNX export, the out-of-domain sets against the
    normal test images and the synthetic anomalies (into ``metrics``), the defect metrics and
    the model card; returns (record, defects)."""
    with steps.step("threshold"):
        normal = len(splits.train) + len(splits.val)
        plan = plan_calibration(params.anomaly, len(splits.val), normal)
        warning = reachability_warning(params.anomaly, plan, params.data.val_fraction)
        if warning:
            print(warning, file=sys.stderr)
        recipe = (params.model, params.train, params.anomaly)
        record = calibrate_split_or_cross_fit(
            scorer, plan, recipe, splits.train.images, splits.val.images, params.data.val_fraction
        )
        write_json(record.as_json(), layout.MODEL_THRESHOLD)
    with steps.step("ONNX export"):
        export_onnx(scorer, layout.MODEL_ONNX)
    with steps.step("out-of-domain sets"):
        # Flipped or inverted digits, noise and blank frames against the normal test images.
        normal_test = splits.test.labels == 0 if params.data.source == "folder" else slice(None)
        metrics["out_of_domain_roc_auc"] = out_of_domain_auroc(
            scorer, splits.test.images[normal_test]
        )
    with steps.step("synthetic anomalies"):
        # Made from validation images (normal, never trained on): a label-free check that a
        # folder with no labelled defects also gets.
        check = synthetic_check(partial(score_images, scorer), splits.val.images)
        metrics["synthetic_anomaly_roc_auc"] = check.metrics()
        warning = check.warning(scorer.spec.name)
        if warning:
            print(warning, file=sys.stderr)
    reference = scorer.reference
    features_only = reference is not None and reference.images is None
    with steps.step("defects"):
        class_names = read_manifest(layout.MANIFEST)["class_names"]
        ablations = partial(defect_ablations, params, splits.train.images, splits.val.images)
        # The training images beside a features-only reference: the table's cosine_knn
        # compares pixels (the model file keeps none).
        measured = scorer
        if features_only:
            measured = Scorer(scorer.model, reference.with_images(splits.train.images), scorer.spec)
        defects = measure_defects(measured, splits, class_names, layout.ANOMALY_MAPS_PNG, ablations)
    stored = 0 if reference is None else len(splits.train.images)
    card = model_card(record, params.data.source, metrics["out_of_domain_roc_auc"], defects,
                      stored, check, features_only=features_only)  # fmt: skip
    with atomic_path(layout.MODEL_CARD) as tmp:
        tmp.write_text(card)
    return record, defects


if __name__ == "__main__":
    run_stage(main)
