"""Promotion with a quality gate: move @champion only when the challenger is better than noise.

The newest registered version is the challenger. Both it and the champion score the same
held-out images; a paired bootstrap over those images decides. Every decision leaves tags on
both versions, and every move of @champion an audit tag on the registered model.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from dataclasses import asdict, dataclass

import torch

from convvae.anomaly import ScoreSpec, model_scores
from convvae.errors import ConfigError
from convvae.model import ConvVAE, load_model
from convvae.stats import PairedComparison, paired_bootstrap
from convvae.tracking import Tracker

METRICS = ("test_neg_elbo", "test_iwae_nll")
CHAMPION, CHALLENGER = "champion", "challenger"


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


def per_image_losses(model: ConvVAE, images: torch.Tensor, metric: str, spec: ScoreSpec):
    """Lower-is-better loss per image (float64 (N,), nats) for the named test metric, from the
    one estimator (``convvae.anomaly.model_scores``) with ``spec``'s samples and noise seed."""
    terms = model_scores(model, images, spec.samples, spec.noise_seed)
    return terms["neg_elbo" if metric == "test_neg_elbo" else "iwae_nll"]


def promote(
    tracker: Tracker,
    name: str,
    images: torch.Tensor,
    metric: str,
    dry_run: bool,
    spec: ScoreSpec | None = None,
) -> Decision:
    """Compare the newest version of ``name`` with @champion on ``images`` (uint8 N,C,H,W);
    per-image losses use ``spec``'s sample count and noise (default: the anomaly defaults)."""
    spec = spec or ScoreSpec()
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric} is not supported; choose one of {', '.join(METRICS)}")
    # The registry hands out versions as ints or strings depending on the store: use strings.
    newest = str(tracker.model_versions(name)[-1].version)
    holder = tracker.version_by_alias(name, CHAMPION)
    champion = None if holder is None else str(holder.version)
    if champion is None:
        decision = Decision(
            name, metric, newest, None, None, True, "first version: no champion yet"
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
        )
    else:
        comparison = paired_bootstrap(
            per_image_losses(_load(tracker, name, champion), images, metric, spec),
            per_image_losses(_load(tracker, name, newest), images, metric, spec),
        )
        reason = (
            f"challenger lowers {metric} by {comparison.improvement:.3f} nats/image, 95% CI "
            f"[{comparison.ci_low:.3f}, {comparison.ci_high:.3f}], p={comparison.p_value:.4f}"
        )
        decision = Decision(
            name,
            metric,
            newest,
            champion,
            comparison,
            comparison.significant,
            reason + ("" if comparison.significant else ": not better than noise"),
        )
    if not dry_run:
        _record(tracker, decision)
    return decision


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
