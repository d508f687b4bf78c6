"""The model card: what a trained model flags, what its threshold promises (and what kind of
promise it is), how it did on the checks run beside it, and which data chose its defaults.
The evaluate stage writes it beside the model and it travels with the registered version."""

from __future__ import annotations

from convvae.anomaly.synthetic import SyntheticCheck
from convvae.anomaly.thresholds import GUARANTEE, ThresholdRecord, achievable_fpr, fpr_spread

# Where each default was chosen, and on which data (never test images).
DEFAULTS_CHOSEN = (
    "the fused score and its parts: held-out training images of Fashion-MNIST and mnist-5k "
    "(docs/benchmark.md), its contrast part on their validation images and generated "
    "degenerate frames (docs/benchmark/degenerate-selection); the folder map, score and "
    "likelihood: held-out tiles of four scikit-image photographs with synthetic defects, and "
    "patch_and_fused on three of them, the monocrystalline ELPV cells and the 7s of mnist-5k "
    "(docs/benchmark/folder-selection; the polycrystalline cells are held out); the patch "
    "bank (a coreset of 16,384 rows): the same folders and two 128 px ones of the same "
    "photographs (docs/benchmark/folder-selection/coreset); the class "
    "models' epochs and the sample count: "
    "validation images of both class sources (docs/benchmark/speed-selection); cross-fitted "
    "calibration for small folders: 22 folders of other photographs "
    "(docs/benchmark/calibration)"
)


def model_card(
    record: ThresholdRecord,
    data_source: str,
    out_of_domain: dict[str, float],
    defects: dict,
    stored_images: int,
    synthetic: SyntheticCheck | None = None,
    *,
    features_only: bool = False,
) -> str:
    """Markdown: the score and threshold, the calibration and its guarantee, the expected spread
    of this threshold's rate, the out-of-domain, synthetic-anomaly and defect checks, the
    training images the model's files hold (``stored_images``, its reference; their features
    only where ``features_only``), and where defaults come from."""
    n = len(record.calibration_scores)
    low, high = fpr_spread(n, record.target_fpr)
    how = {
        "split": "the half of the validation images that training and early stopping never saw",
        "cross_fit": f"every normal image, each scored by one of {record.context.get('folds')} "
        "models trained without it (cross-fitted: approximate, measured in "
        "docs/benchmark/calibration)",
    }.get(record.calibration, record.calibration)
    lines = [
        f"# Model card: ConvVAE anomaly detector ({data_source})",
        "",
        f"- **Flags** images whose `{record.spec.name}` score ({record.spec.samples} posterior "
        f"samples, noise seed {record.spec.noise_seed}) is above **{record.threshold:.4g}**; "
        "higher means more unusual. Each image also gets a conformal p-value (small = unusual).",
        f"- **Calibrated** on {n} normal images: {how}.",
        f"- **Target false-positive rate** {record.target_fpr:.1%}; the smallest these images can "
        f"promise is {achievable_fpr(n):.1%}.",
        f"- **Guarantee**: {GUARANTEE}.",
        f"- **This threshold's own rate** on new normal images lies between {low:.1%} and "
        f"{high:.1%} for 90% of calibration sets of this size (Beta spread of the rank).",
    ]
    if out_of_domain:
        checks = ", ".join(f"{name} {value:.3f}" for name, value in out_of_domain.items())
        lines.append(f"- **Out-of-domain checks** (ROC-AUC against normal test images): {checks}.")
    lines += [_synthetic_line(synthetic, record.spec.name)] if synthetic is not None else []
    if "image_roc_auc" in defects:
        pixel = defects.get("pixel_roc_auc")
        pixel_text = f", pixel ROC-AUC {pixel:.3f}" if pixel is not None else ""
        lines.append(
            f"- **Defects in the folder's test part**: image ROC-AUC "
            f"{defects['image_roc_auc']:.3f}{pixel_text} (metrics/defects.json)."
        )
    if "vae_free_best" in defects:
        margin = defects["margin_over_vae_free.image_roc_auc"]
        low, high = defects["margin_over_vae_free.ci_low"], defects["margin_over_vae_free.ci_high"]
        lines.append(
            f"- **Margin over the best method without a trained VAE** "
            f"({defects['vae_free_best']}): {margin:+.3f} image ROC-AUC, 95% interval "
            f"[{low:+.3f}, {high:+.3f}]; where it is not above 0, that method does as well here."
        )
    if stored_images:
        lines.append(_stored_line(stored_images, features_only))
    lines += [f"- **Defaults chosen on**: {DEFAULTS_CHOSEN}.", ""]
    return "\n".join(lines)


def _synthetic_line(check: SyntheticCheck, score_name: str) -> str:
    families = ", ".join(f"{name} {value:.3f}" for name, value in check.per_family.items())
    line = (
        f"- **Anomalies made from its own normal images** (patches pasted, mean-filled and "
        f"blended into {check.normal_images} validation images): ROC-AUC {check.roc_auc:.3f}, "
        f"95% interval [{check.ci_low:.3f}, {check.ci_high:.3f}], chance 0.500 ({families})."
    )
    warning = check.warning(score_name)
    return line + (f" **Below chance**: {warning.removeprefix('warning: ')}." if warning else "")


def _stored_line(images: int, features_only: bool) -> str:
    if features_only:
        return (
            f"- **Holds features of its {images} training images, not the images** "
            "(anomaly.store_images: false): each image's encoder hidden layer and two contrast "
            "statistics, and a coreset of 4x4-patch features; a decoder run on a hidden layer "
            "gives a blurred likeness, and the cosine_knn score is not available."
        )
    return (
        f"- **Holds its training images**: the model file, the registered artifact and the "
        f"ONNX graph contain {images} normal training images exactly (the distance scores and "
        "the patch map compare against them); share the model only where those images may go "
        "(anomaly.store_images: false keeps only their features)."
    )
