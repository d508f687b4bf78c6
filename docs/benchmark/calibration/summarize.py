"""The small-folder calibration table from small_folders.py's JSON lines: per method, the mean
realised false-positive rate, its spread over folders, and how often it fell inside the range the
record stated (90% expected).

    python docs/benchmark/calibration/summarize.py small_folders.jsonl
"""

import json
import sys

import numpy as np


def main(path: str) -> None:
    with open(path) as lines:
        rows = [json.loads(line) for line in lines]
    print(f"{len(rows)} folders of {rows[0]['train']} + validation images; target 5%")
    print("| method | calibration images | mean realised FPR | median | 90% of folders | "
          "within the stated range | consistent with it |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for method in ("split", "cross_fit"):
        rates = np.array([r[method]["realised_fpr"] for r in rows])
        within = np.mean([r[method]["within"] for r in rows])
        consistent = np.mean([r[method]["consistent"] for r in rows])
        low, high = np.percentile(rates, [5, 95])
        n = rows[0][method]["calibration_images"]
        print(f"| {method} | {n} | {100 * rates.mean():.1f}% | {100 * np.median(rates):.1f}% | "
              f"{100 * low:.1f}–{100 * high:.1f}% | {within:.0%} | {consistent:.0%} |")  # fmt: skip
    print()
    print("| photograph | channels | split FPR | cross_fit FPR | stated range (cross_fit) |")
    print("|---|---|---|---|---|")
    for r in rows:
        low, high = r["cross_fit"]["expected_fpr_90"]
        split, cross = r["split"]["realised_fpr"], r["cross_fit"]["realised_fpr"]
        print(f"| {r['photograph']} | {r['channels']} | {100 * split:.1f}% | {100 * cross:.1f}% "
              f"| {100 * low:.1f}–{100 * high:.1f}% |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
