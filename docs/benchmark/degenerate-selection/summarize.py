"""Mean over classes of each method's ROC-AUC against the other classes and each generated set,
and the worst generated set, from select_fusion.py's JSON lines.

    python docs/benchmark/degenerate-selection/summarize.py mnist-5k.jsonl fashion-mnist.jsonl
"""

import json
import sys

import numpy as np


def main(paths: list[str]) -> None:
    for path in paths:
        with open(path) as lines:
            rows = [json.loads(line) for line in lines]
        sets = list(rows[0]["auc"])
        methods = list(rows[0]["auc"][sets[0]])
        print(f"\n{path}: {len(rows)} classes; mean ROC-AUC % over classes")
        print(f"{'method':28}" + "".join(f"{s[:13]:>14}" for s in sets) + f"{'worst gen.':>12}")
        for method in methods:
            means = {s: 100 * np.mean([r["auc"][s][method] for r in rows]) for s in sets}
            worst = min(
                100 * r["auc"][s][method] for r in rows for s in sets if s != "other_classes"
            )
            print(f"{method:28}" + "".join(f"{means[s]:14.1f}" for s in sets) + f"{worst:12.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
