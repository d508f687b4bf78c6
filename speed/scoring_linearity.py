"""Does any scoring step of the evaluate stage grow faster than linearly in the images it
scores? Seconds of each step against the number of test images, at one image size.

One model of the folder preset for SIZE px RGB (as initialised: scoring costs the same FLOPs
trained or not), its reference fitted on 400 real texture tiles (immunohistochemistry, as
tests/mvtec.py cuts them; the coreset bank of 16,384 rows), then for N test tiles:

- ``score_and_map``: the folder default (``patch_and_fused``) and its map, as the threshold and
  defects steps score;
- ``out_of_domain``: ``out_of_domain_auroc``, its 8 sets sized by the N normal images (at most
  200 each);
- ``synthetic``: the synthetic-anomaly check on N validation-sized images (at most 200).

Prints the least seconds of ``--repeats`` runs and seconds per image for each N; linear means
seconds per image stays flat as N doubles (the last two steps stop growing where their sets
reach 200 images).

    .venv/bin/python speed/scoring_linearity.py [--size 64] [--counts 100 200 400 800]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "speed")]

from roofline import cpu_model  # noqa: E402

from convvae.anomaly.fit import fit_reference  # noqa: E402
from convvae.anomaly.outofdomain import out_of_domain_auroc  # noqa: E402
from convvae.anomaly.scorer import Scorer  # noqa: E402
from convvae.anomaly.scores import ScoreSpec  # noqa: E402
from convvae.anomaly.scoring import score_and_map, score_images  # noqa: E402
from convvae.anomaly.synthetic import synthetic_check  # noqa: E402
from convvae.config import parse_params  # noqa: E402
from convvae.model.architecture import resolve_architecture  # noqa: E402
from convvae.model.vae import ConvVAE  # noqa: E402
from tests.mvtec import good_patches  # noqa: E402


def timed(action, repeats: int) -> float:
    """The least seconds of ``repeats`` runs (the machine's noise only ever adds time)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    params = parse_params({"data": {"source": "folder", "path": "unused"}})  # a folder's defaults
    model = ConvVAE(resolve_architecture(params.model, (3, args.size, args.size))).eval()
    train = good_patches(True, args.size, 400, seed=0)
    held_out = good_patches(True, args.size, 40, seed=1)
    started = time.perf_counter()
    reference = fit_reference(model, train, held_out, 8, 0)
    print(f"reference fitted in {time.perf_counter() - started:.1f} s")
    scorer = Scorer(model, reference, ScoreSpec("patch_and_fused"))
    test = good_patches(True, args.size, max(args.counts), seed=2)
    print(
        f"{dt.date.today()}, {cpu_model()}, {torch.get_num_threads()} threads, {args.size} px RGB"
    )
    print("| images | score_and_map s (per image ms) | out_of_domain s | synthetic s |")
    print("|---:|---:|---:|---:|")
    for n in args.counts:
        images = test[:n]
        repeats = args.repeats
        scored = timed(lambda: score_and_map(scorer, images, ("patch_and_fused",)), repeats)  # noqa: B023
        odd = timed(lambda: out_of_domain_auroc(scorer, images), repeats)  # noqa: B023
        check = timed(lambda: synthetic_check(partial(score_images, scorer), images), repeats)  # noqa: B023
        print(
            f"| {n} | {scored:.1f} ({1000 * scored / n:.0f}) | {odd:.1f} | {check:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
