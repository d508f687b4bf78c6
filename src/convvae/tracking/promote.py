"""Promotion with a quality gate: move @champion only when the challenger is better than noise
and its anomaly decisions hold.

The newest registered version is the challenger. Each check runs on the half of the validation
split that did not shape what it checks (never the test split, so repeated promotion does not
select on test): a paired bootstrap of the per-image likelihood over the *calibration* half
(never trained on, nor used to choose an epoch) decides, and the challenger must also pass the
anomaly gate on the score it serves (its stored score, samples and threshold), on the
*selection* half (which did not set the threshold):

- its realised false-positive rate on those normal images is at most its target plus three
  binomial standard errors (a threshold that flags 20% of normal images at a 5% target fails);
- its ROC-AUC on the out-of-domain sets (``convvae.anomaly.outofdomain``: blank, saturated, noise,
  inverted and flipped copies of the same images, anomalies known by construction) is not more
  than 0.01 below the champion's.

Every decision leaves tags on both versions, and every move of @champion an audit tag on the
registered model.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import math
import typing
from dataclasses import asdict, dataclass

import numpy as np

from convvae.anomaly.detector import Detector, detector_from
from convvae.anomaly.outofdomain import out_of_domain_auroc
from convvae.anomaly.scorer import Scorer
from convvae.anomaly.scores import ScoreSpec
from convvae.anomaly.scoring import every_score
from convvae.anomaly.thresholds import THRESHOLD_TAG, parse_record
from convvae.config import AnomalyConfig, PromoteMetric
from convvae.errors import ConfigError
from convvae.metrics.stats import PairedComparison, paired_bootstrap
from convvae.model.files import load_model
from convvae.model.vae import ConvVAE
from convvae.tracking.registry import Registry
from convvae.tracking.tracker import Tracker

METRICS: tuple[str, ...] = typing.get_args(PromoteMetric)
CHAMPION, CHALLENGER = "champion", "challenger"
# A challenger may lose this much mean out-of-domain ROC-AUC to the champion and still pass.
OUT_OF_DOMAIN_MARGIN = 0.01


@dataclass(frozen=True)
class AnomalyCheck:
    """One version's served score on the selection images."""

    version: str
    score: str
    realised_fpr: float  # share of the (normal) selection images above the version's threshold
    fpr_limit: float  # its target_fpr plus three binomial standard errors
    out_of_domain_roc_auc: float  # mean over the out-of-domain sets

    @property
    def fpr_ok(self) -> bool:
        return self.realised_fpr <= self.fpr_limit


@dataclass(frozen=True)
class Decision:
    """What promote did (or, with dry_run, would do)."""

    model: str
    metric: str
    challenger: str
    champion: str | None
    comparison: PairedComparison | None
    promoted: bool
    reason: str
    checks: tuple[AnomalyCheck, ...] = ()  # challenger first, then the champion


def per_image_losses(
    model: ConvVAE, images: np.ndarray, metric: str, samples: int, noise_seed: int
) -> np.ndarray:
    """Lower-is-better loss per image (float64 (N,), nats) for ``metric`` (neg_elbo or
    iwae_nll), from the scorer with ``samples`` importance samples and that noise seed."""
    scorer = Scorer(model, None, ScoreSpec(metric, samples, noise_seed))
    return every_score(scorer, images, (metric,))[metric]


def anomaly_check(detector: Detector, images: np.ndarray, version: str) -> AnomalyCheck:
    """The anomaly gate's figures for one version on normal ``images`` (uint8 N,C,H,W)."""
    flagged = detector.predict(images)
    target = detector.record.target_fpr
    limit = target + 3 * math.sqrt(target * (1 - target) / len(images))
    odd = out_of_domain_auroc(detector.scorer, images)
    return AnomalyCheck(
        version,
        detector.record.spec.name,
        float(flagged.mean()),
        limit,
        float(np.mean(list(odd.values()))),
    )


def promote(
    tracker: Tracker,
    name: str,
    halves: tuple[np.ndarray, np.ndarray],
    metric: str,
    dry_run: bool,
    anomaly: AnomalyConfig | None = None,
) -> Decision:
    """Compare the newest version of ``name`` with @champion on ``halves``, the selection and
    calibration halves of the validation images (uint8 N,C,H,W, normal; module docstring);
    per-image losses use ``anomaly``'s sample count and noise (default: the section's
    defaults), each version's anomaly check its own threshold record."""
    selection, calibration = halves
    anomaly = anomaly or AnomalyConfig()
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric} is not supported; choose one of {', '.join(METRICS)}")
    registry = tracker.registry
    # The registry hands out versions as ints or strings depending on the store: use strings.
    newest = str(registry.model_versions(name)[-1].version)
    holder = registry.version_by_alias(name, CHAMPION)
    champion = None if holder is None else str(holder.version)
    # Each version's model is read once, for both gates.
    loaded = {v: _load(registry, name, v, v == newest) for v in (newest, champion) if v is not None}
    checks = tuple(
        anomaly_check(detector, selection, version)
        for version, (_, detector) in loaded.items()
        if detector is not None
    )
    if champion is None:
        decision = Decision(
            name, metric, newest, None, None, True, "first version: no champion yet", checks
        )
    elif champion == newest:
        reason = "the newest version is already the champion"
        decision = Decision(name, metric, newest, champion, None, False, reason, checks)
    else:
        losses = [
            per_image_losses(loaded[v][0], calibration, metric, anomaly.samples, anomaly.noise_seed)
            for v in (champion, newest)
        ]
        decision = _compare(name, metric, newest, champion, paired_bootstrap(*losses), checks)
    if not dry_run:
        _record(tracker, decision)
    return decision


def _compare(
    name: str,
    metric: str,
    newest: str,
    champion: str,
    comparison: PairedComparison,
    checks: tuple[AnomalyCheck, ...],
) -> Decision:
    """The decision between two versions: better than noise, and through the anomaly gate."""
    reason = (
        f"challenger lowers {metric} by {comparison.improvement:.3f} nats/image, 95% CI "
        f"[{comparison.ci_low:.3f}, {comparison.ci_high:.3f}], not better in "
        f"{comparison.no_improvement_share:.2%} of resamples"
    )
    failed = _anomaly_gate_failure(checks, newest)
    if not comparison.significant:
        reason += ": not better than noise"
    elif failed:
        reason += f", but {failed}"
    promoted = comparison.significant and not failed
    return Decision(name, metric, newest, champion, comparison, promoted, reason, checks)


def _anomaly_gate_failure(checks: tuple[AnomalyCheck, ...], challenger: str) -> str:
    """Why the challenger fails the anomaly gate, or "" when it passes (or has no threshold)."""
    by_version = {check.version: check for check in checks}
    mine = by_version.get(challenger)
    if mine is None:
        return ""
    if not mine.fpr_ok:
        return (
            f"its threshold flags {mine.realised_fpr:.1%} of normal selection images "
            f"(limit {mine.fpr_limit:.1%})"
        )
    others = [c for c in checks if c.version != challenger]
    if (
        others
        and mine.out_of_domain_roc_auc < others[0].out_of_domain_roc_auc - OUT_OF_DOMAIN_MARGIN
    ):
        return (
            f"its out-of-domain ROC-AUC {mine.out_of_domain_roc_auc:.3f} is below the "
            f"champion's {others[0].out_of_domain_roc_auc:.3f}"
        )
    return ""


def _load(
    registry: Registry, name: str, version: str, challenger: bool
) -> tuple[ConvVAE, Detector | None]:
    """A version's model and detector. The challenger must be complete (its threshold record
    tagged and served alike, its model file the one registered: ``Registry.complete_version``):
    an incomplete one would skip the anomaly gate. A champion registered before records were
    stored competes on likelihood, one registered before digests without one."""
    uri = f"models:/{name}/{version}"
    if not challenger and THRESHOLD_TAG not in registry.version(uri).tags:
        return load_model(registry.model_file(uri)), None
    model_file, tag = registry.complete_version(uri, require_digest=challenger)
    detector = detector_from(model_file, parse_record(tag, f"{uri} tag {THRESHOLD_TAG}"))
    return detector.scorer.model, detector


def _record(tracker: Tracker, decision: Decision) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # tag keys allow no '+'
    tracker.registry.set_alias(decision.model, CHALLENGER, decision.challenger)
    if decision.comparison is not None:
        tags = {
            f"gate.{decision.metric}.{key}": value
            for key, value in asdict(decision.comparison).items()
        }
        tags["gate.compared"] = f"v{decision.challenger} vs v{decision.champion} at {now}"
        tags["gate.split"] = (
            "likelihood: validation calibration half; anomaly gate: validation selection half"
        )
        for check in decision.checks:
            prefix = f"gate.anomaly.v{check.version}"
            tags[f"{prefix}.realised_fpr"] = check.realised_fpr
            tags[f"{prefix}.fpr_limit"] = check.fpr_limit
            tags[f"{prefix}.out_of_domain_roc_auc"] = check.out_of_domain_roc_auc
        for version in (decision.challenger, decision.champion):
            tracker.registry.tag_version(decision.model, version, tags)
    if decision.promoted:
        tracker.registry.set_alias(decision.model, CHAMPION, decision.challenger)
        audit = {
            "who": getpass.getuser(),
            "when": now,
            "why": decision.reason,
            "from": decision.champion,
            "to": decision.challenger,
        }
        tracker.registry.tag_version(
            decision.model, decision.challenger, {"promotion.audit": json.dumps(audit)}
        )
        # One tag per move: the registry's history of which version was champion when.
        tracker.registry.tag_registered_model(
            decision.model, f"champion.history.{now}", json.dumps(audit)
        )
