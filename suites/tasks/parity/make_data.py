"""Writes the parity task's JSONL splits: a tiny multiple-choice task for the smoke suite and tests.

Inputs are 'Number N'; the context says the answer is E for even and O for odd. Single-letter
choices keep the character-level tiny test model free of a length bias between options.

Splits: train, test and demos are drawn from disjoint number ranges; validation is drawn after them
from the train range minus the train numbers, so the four files share no input and the older three
files stay as they were. Test stays small (40): the smoke suite and the tests score all of it.
Run from anywhere: `python suites/tasks/parity/make_data.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SPLITS = {"train": (64, 100, 499), "test": (40, 500, 899), "demos": (8, 900, 999)}
N_VALIDATION = 40


def main() -> None:
    rng = random.Random(0)
    drawn = {split: rng.sample(range(lo, hi + 1), n) for split, (n, lo, hi) in SPLITS.items()}
    lo, hi = SPLITS["train"][1:]
    drawn["validation"] = rng.sample(sorted(set(range(lo, hi + 1)) - set(drawn["train"])), N_VALIDATION)
    for split, numbers in drawn.items():
        rows = [{"question": f"Number {x}", "label": x % 2} for x in numbers]
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
