"""Writes the parity task's JSONL splits: a tiny multiple-choice task for the smoke suite and tests.

Inputs are 'Number N'; the context says the answer is E for even and O for odd. Single-letter
choices keep the character-level tiny test model free of a length bias between options.
Run from anywhere: `python suites/tasks/parity/make_data.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SPLITS = {"train": (64, 100, 499), "test": (40, 500, 899), "demos": (8, 900, 999)}


def main() -> None:
    rng = random.Random(0)
    for split, (n, lo, hi) in SPLITS.items():
        numbers = rng.sample(range(lo, hi + 1), n)
        rows = [{"question": f"Number {x}", "label": x % 2} for x in numbers]
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
