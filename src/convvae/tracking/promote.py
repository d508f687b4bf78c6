"""Promotion with a quality gate: move @champion only when the challenger is better than noise
and its anomaly decisions hold.

The newest registered version is the challenger. Both it and the champion score the same
*selection* images (the half of the validation split that chose epochs; never the test split,
so repeated promotion does not select on test); a paired bootstrap of the per-image likelihood
over those images decides, and the challenger must also pass the anomaly gate on the score it
serves (its stored score, samples and threshold):

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
from dataclasses import asdict, dataclass

import numpy as np
import torch

from convvae.anomaly.outofdomain import out_of_domain_auroc
from convvae.anomaly.scores import ScoreSpec, model_scores, score_images
from convvae.anomaly.thresholds import THRESHOLD_TAG, StoredThreshold, parse_threshold
from convvae.errors import ConfigError
from convvae.metrics.stats import PairedComparison, paired_bootstrap
from convvae.model.vae import ConvVAE, load_model
from convvae.tracking.tracker import Tracker

METRICS = ("neg_elbo", "iwae_nll")
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


def per_image_losses(model: ConvVAE, images: torch.Tensor, metric: str, spec: ScoreSpec):
    """Lower-is-better loss per image (float64 (N,), nats) for ``metric`` (neg_elbo or
    iwae_nll), from the one estimator (``convvae.anomaly.scores.model_scores``) with ``spec``'s
    samples
    and noise seed."""
    return model_scores(model, images, spec.samples, spec.noise_seed)[metric]


def anomaly_check(
    model: ConvVAE, stored: StoredThreshold, target_fpr: float, images: np.ndarray, version: str
) -> AnomalyCheck:
    """The anomaly gate's figures for one version on normal ``images`` (uint8 N,C,H,W)."""
    flagged = stored.decide(score_images(model, images, stored.spec))["is_anomaly"]
    limit = target_fpr + 3 * math.sqrt(target_fpr * (1 - target_fpr) / len(images))
    odd = out_of_domain_auroc(model, images, stored.spec)
    return AnomalyCheck(
        version, stored.spec.name, float(flagged.mean()), limit, float(np.mean(list(odd.values())))
    )


def promote(
    tracker: Tracker,
    name: str,
    images: torch.Tensor,
    metric: str,
    dry_run: bool,
    spec: ScoreSpec | None = None,
) -> Decision:
    """Compare the newest version of ``name`` with @champion on the selection ``images``
    (uint8 N,C,H,W, normal); per-image losses use ``spec``'s sample count and noise (default:
    the anomaly defaults), each version's anomaly check its own stored score."""
    spec = spec or ScoreSpec()
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric} is not supported; choose one of {', '.join(METRICS)}")
    # The registry hands out versions as ints or strings depending on the store: use strings.
    newest = str(tracker.model_versions(name)[-1].version)
    holder = tracker.version_by_alias(name, CHAMPION)
    champion = None if holder is None else str(holder.version)
    # Each version's model is read once, for both gates.
    models = {v: _load(tracker, name, v) for v in (newest, champion) if v is not None}
    checks = tuple(
        check
        for version, model in models.items()
        if (check := _check(tracker, name, version, model, images)) is not None
    )
    if champion is None:
        decision = Decision(
            name, metric, newest, None, None, True, "first version: no champion yet", checks
        )
    elif champion == newest:
        decision = Decision(
            name,
            metric,
            newest,
            champion,
            None,
            False,
            "the newest version is already the champion",
            checks,
        )
    else:
        comparison = paired_bootstrap(
            per_image_losses(models[champion], images, metric, spec),
            per_image_losses(models[newest], images, metric, spec),
        )
        reason = (
            f"challenger lowers {metric} by {comparison.improvement:.3f} nats/image, 95% CI "
            f"[{comparison.ci_low:.3f}, {comparison.ci_high:.3f}], p={comparison.p_value:.4f}"
        )
        failed = _anomaly_gate_failure(checks, newest)
        if not comparison.significant:
            reason += ": not better than noise"
        elif failed:
            reason += f", but {failed}"
        decision = Decision(
            name,
            metric,
            newest,
            champion,
            comparison,
            comparison.significant and not failed,
            reason,
            checks,
        )
    if not dry_run:
        _record(tracker, decision)
    return decision


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


def _check(
    tracker: Tracker, name: str, version: str, model: ConvVAE, images: torch.Tensor
) -> AnomalyCheck | None:
    record = tracker.version(f"models:/{name}/{version}").tags.get(THRESHOLD_TAG)
    if record is None:  # registered before thresholds were stored: likelihood only
        return None
    stored = parse_threshold(record, f"models:/{name}/{version} tag {THRESHOLD_TAG}")
    target = json.loads(record).get("target_fpr", 0.05)
    return anomaly_check(model, stored, target, np.asarray(images), version)


def _load(tracker: Tracker, name: str, version: str) -> ConvVAE:
    return load_model(tracker.model_file(f"models:/{name}/{version}"))


def _record(tracker: Tracker, decision: Decision) -> None:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # tag keys allow no '+'
    tracker.set_alias(decision.model, CHALLENGER, decision.challenger)
    if decision.comparison is not None:
        tags = {
            f"gate.{decision.metric}.{key}": value
            for key, value in asdict(decision.comparison).items()
        }
        tags["gate.compared"] = f"v{decision.challenger} vs v{decision.champion} at {now}"
        tags["gate.split"] = "validation selection half"
        for check in decision.checks:
            prefix = f"gate.anomaly.v{check.version}"
            tags[f"{prefix}.realised_fpr"] = check.realised_fpr
            tags[f"{prefix}.fpr_limit"] = check.fpr_limit
            tags[f"{prefix}.out_of_domain_roc_auc"] = check.out_of_domain_roc_auc
        for version in (decision.challenger, decision.champion):
            tracker.tag_version(decision.model, version, tags)
    if decision.promoted:
        tracker.set_alias(decision.model, CHAMPION, decision.challenger)
        audit = {
            "who": getpass.getuser(),
            "when": now,
            "why": decision.reason,
            "from": decision.champion,
            "to": decision.challenger,
        }
        tracker.tag_version(
            decision.model, decision.challenger, {"promotion.audit": json.dumps(audit)}
        )
        # One tag per move: the registry's history of which version was champion when.
        tracker.tag_registered_model(decision.model, f"champion.history.{now}", json.dumps(audit))
