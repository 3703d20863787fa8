"""Does the course's pretrained backbone help? Lesson 07's comparison, over many seeds.

    python scripts/compare_pretrained_backbone.py             # 4 to 7 minutes on one CPU core
    python scripts/compare_pretrained_backbone.py --seeds 3 --labels 5 --out /tmp/c.json   # a quick try

Learns the new task of lesson 07 (the digits 5-9, off-centre, ``helpers.pretrained.transfer_task``)
from k labelled images per class, in each setup of ``helpers.pretrained.SETUPS``: the pretrained or
a random backbone, frozen (only the new head trains) or trained with the head. Every setup gets the
same seeds, and a seed fixes the labelled images and the new head's first weights, so the results
are paired by seed. Frozen backbones are run with their own BatchNorm statistics and with
statistics recomputed on the labelled images (no labels used), so that the pretrained and the
random backbone can be compared with the same BatchNorm treatment.

Writes ``data/pretrained_backbone/comparison.json`` (per-seed counts of correct test images, the
paired differences, and how it was made: command, PyTorch version, date, threads) and
``comparison.md`` next to it (the same as tables). Runs on a fixed number of CPU threads (1 by
default, ``--threads``), because the number of threads changes the rounding, and with it a few
test images. Lesson 07 prints these files; it does not recompute them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from helpers.pretrained import (  # noqa: E402
    COMPARISON_FILE,
    SETUPS,
    few_label_accuracy,
    load_backbone_state,
    paired_difference,
    transfer_task,
)

STEPS, LR = 50, 1e-2
"""The training recipe of lesson 07 (full-batch Adam steps, learning rate), the same for every setup."""

LABELS_PER_CLASS = (1, 2, 5, 10, 20)
CENTRED_LABELS_PER_CLASS = (5, 10)

PAIRS = (
    ("frozen pretrained, BN recalibrated", "frozen random, BN calibrated"),
    ("frozen pretrained", "frozen random, BN calibrated"),
    ("frozen pretrained", "frozen random, BN at 0 and 1"),
    ("frozen pretrained", "trained from scratch"),
    ("fine-tuned pretrained", "trained from scratch"),
)
"""The paired differences reported: (a, b) means a − b, in accuracy points, per seed."""


def run_comparison(seeds, labels_per_class, centred_labels_per_class, log=print) -> dict:
    """Every setup, seed and condition; returns the dict that is written as ``comparison.json``."""
    backbone = load_backbone_state()
    tasks = {"off-centre": transfer_task(shifted=True), "centred": transfer_task(shifted=False)}
    conditions = [("off-centre", k) for k in labels_per_class] + [("centred", k) for k in centred_labels_per_class]
    n_test = len(tasks["off-centre"].y_test)
    correct: dict[str, dict[str, dict[str, list[int]]]] = {}
    differences = []
    for digits, k in conditions:
        start = time.perf_counter()
        counts = {}
        for name, setup in SETUPS.items():
            accuracies = [few_label_accuracy(setup, tasks[digits], k, seed, STEPS, LR, backbone) for seed in seeds]
            counts[name] = [round(a * n_test) for a in accuracies]
        correct.setdefault(digits, {})[str(k)] = counts
        for a, b in PAIRS:
            summary = paired_difference([c / n_test for c in counts[a]], [c / n_test for c in counts[b]])
            differences.append({"digits": digits, "labels_per_class": k, "a": a, "b": b} | summary)
        log(f"{digits} digits, {k:2} labels per class: {time.perf_counter() - start:.1f} s")
    return {
        "settings": {
            "task": "digits 5-9 (labels 0-4), helpers.pretrained.transfer_task; off-centre = moved by up to 1 px",
            "seeds": list(seeds),
            "labels_per_class": list(labels_per_class),
            "centred_labels_per_class": list(centred_labels_per_class),
            "steps": STEPS,
            "lr": LR,
            "test_images": n_test,
            "setups": {name: vars(setup) for name, setup in SETUPS.items()},
        },
        "correct": correct,
        "differences": differences,
    }


def markdown(result: dict) -> str:
    """The comparison as Markdown tables: accuracy per setup, then the paired differences."""
    settings, prov = result["settings"], result["provenance"]
    n_test, n_seeds = settings["test_images"], len(settings["seeds"])
    lines = [
        "# Lesson 07: does the course's pretrained backbone help?",
        "",
        f"Written by `{prov['command']}` on {prov['date']} (PyTorch {prov['torch']}, Python {prov['python']}, "
        f"{prov['threads']} CPU thread(s), {prov['machine']}, {prov['seconds']:.0f} s). "
        f"{n_seeds} seeds, paired; test accuracy on {n_test} held-out digits 5-9. Do not edit: re-run the script.",
        "",
        "## Test accuracy (%): mean, sd, min-max over seeds",
        "",
    ]
    for digits, by_k in result["correct"].items():
        ks = list(by_k)
        lines += [f"**{digits} digits**", "", "| setup | " + " | ".join(f"{k}/class" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for name in settings["setups"]:
            cells = []
            for k in ks:
                acc = torch.tensor(by_k[k][name], dtype=torch.float64) * 100 / n_test
                cells.append(f"{acc.mean():.1f} ± {acc.std():.1f} ({acc.min():.1f}-{acc.max():.1f})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Paired differences (accuracy points, a − b per seed)", "",
              "| digits | labels/class | a − b | mean | sd | min | max | 95 % CI of the mean | a ahead / behind / level |",
              "|---|---|---|---|---|---|---|---|---|"]
    for d in result["differences"]:
        lines.append(
            f"| {d['digits']} | {d['labels_per_class']} | {d['a']} − {d['b']} | {d['mean']:+.1f} | {d['sd']:.1f} | "
            f"{d['min']:+.1f} | {d['max']:+.1f} | {d['ci_low']:+.1f} to {d['ci_high']:+.1f} | "
            f"{d['ahead']} / {d['behind']} / {d['level']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line: run the comparison on a fixed number of threads, write the JSON and the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="number of seeds, 0..N-1 (default 20)")
    parser.add_argument("--labels", type=int, nargs="+", default=list(LABELS_PER_CLASS), help="labels per class")
    parser.add_argument("--centred-labels", type=int, nargs="*", default=list(CENTRED_LABELS_PER_CLASS))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for PyTorch (default 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "pretrained_backbone" / COMPARISON_FILE)
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: a spread needs two runs")

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = run_comparison(range(args.seeds), args.labels, args.centred_labels)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python scripts/compare_pretrained_backbone.py", *given])
    result = {
        "provenance": {
            "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "machine": f"{platform.system()} {platform.machine()}",
            "seconds": round(time.perf_counter() - start, 1),
        }
    } | result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
