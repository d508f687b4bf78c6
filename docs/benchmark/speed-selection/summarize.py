"""Mean ROC-AUC over classes per (batch size, epochs, samples) of a select_speed.py result file.

python docs/benchmark/speed-selection/summarize.py fashion-mnist.jsonl
"""

import collections
import json
import sys
from pathlib import Path

SHOWN = ("fused", "excess_nll", "hidden_knn", "cosine_knn")


def main(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    groups = collections.defaultdict(list)
    for row in rows:
        groups[(row["batch_size"], row["epochs"], row["samples"])].append(row)
    print(
        f"batch epochs samples classes | {' '.join(SHOWN)} | train_s score_s "
        f"(per class; {rows[0]['normals']} normals, {rows[0]['anomalies']} anomalies)"
    )
    for key, group in sorted(groups.items()):
        aucs = " ".join(
            f"{100 * sum(r['roc_auc'][name] for r in group) / len(group):.2f}" for name in SHOWN
        )
        train_s = sum(r["train_seconds"] for r in group) / len(group)
        score_s = sum(r["score_seconds"] for r in group) / len(group)
        per_class = " ".join(f"{100 * r['roc_auc']['fused']:.1f}" for r in group)
        print(key, len(group), "|", aucs, f"| {train_s:.1f} {score_s:.1f} | fused: {per_class}")


if __name__ == "__main__":
    main(sys.argv[1])
