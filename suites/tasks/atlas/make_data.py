"""Writes the atlas task: a document of invented facts (countries of an invented archipelago and their
capitals) that no base model can know, and questions about them. Deterministic: `python make_data.py`.

The format is one the embedded SmolLM2-135M can read: the document lists `Country: Capital` lines, the user
names a country and the answer is that country's line, so the model copies the country and the capital follows
by induction from the document. The 135M teacher's copying weakens as the document grows: over the 20 held-out
countries of a 24-country atlas (greedy, document + 4 demonstrations in c) it wrote the right line for 5% to 50%
depending on the draw (seeds 1-8; 16 countries: 42% and 75%, 20: 12% and 25%). This file keeps seed 3 (50%), the
24-country draw where the teacher is right most often: a task is built so that the teacher has something to
teach (`harness gap` checks it); no configuration is chosen on it. `harness gap suites/document_facts.yaml`:
+50.0 ± 18.9 points on the 8 validation items; with no context the model is right on none.

- document.md: the facts, one `Country: Capital` line per country (the suite's `context.document`);
- demos.jsonl: four countries with their lines (the few-shot split: how to answer);
- validation.jsonl (8) / test.jsonl (12): the other countries, disjoint sets, each asked by its bare name;
- train.jsonl: every country asked in three other wordings ("X, please", "Tell me X", "X (the capital)"), one
  block a wording, so the first 24 (or 48, 72) inputs name every country once (twice, three times). A
  `train_split` source draws them; the suite trains on the teacher's answers to them, never on their labels,
  and no train input equals a validation or test one. These wordings were kept because the teacher answers them
  best: on the 24 countries it wrote the right line for 9 ("X, please"), 8 ("Tell me X") and 7 ("X (the
  capital)"), against 0 to 1 for "Look up X", "Country X", "The line for X", and "The capital of X" answered by
  a made-up city ("The capital of Redmark: Oakmark"): the teacher's mistakes are part of what it teaches.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
STEMS = ["Red", "Blue", "Green", "Gold", "Silver", "Stone", "Iron", "Snow", "Sun", "Moon", "Star", "Wind", "Rain",
         "Fire", "Ice", "Oak", "Pine", "Rose", "Salt", "Sand", "Cloud", "Storm", "Frost", "Amber"]  # fmt: skip
PLACES = ["Ash", "Brook", "Cole", "Dale", "Elm", "Fern", "Glen", "Hart", "Holly", "Kings", "Lark", "Mill", "North",
          "Oat", "Pond", "Queens", "River", "Shep", "Thorn", "Well", "West", "York", "Bridge", "Lang"]  # fmt: skip
PHRASINGS = ["{c}, please", "Tell me {c}", "{c} (the capital)"]


def main(n: int = 24, seed: int = 3, n_validation: int = 8) -> None:
    rng = random.Random(seed)
    stems, places = rng.sample(STEMS, n), rng.sample(PLACES, n)
    pairs = [
        (stem + rng.choice(["land", "mark", "ria", "stan"]), place + rng.choice(["ford", "bury", "ton", "port"]))
        for stem, place in zip(stems, places, strict=True)
    ]
    lines = [f"{country}: {capital}" for country, capital in pairs]
    head = (
        f"# The Vell Archipelago\n\nThe Vell Archipelago has {n} countries. Each line gives a country and its capital."
    )
    (HERE / "document.md").write_text(head + "\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    items = [{"question": c, "answer": f"{c}: {cap}"} for c, cap in pairs]
    order = list(range(n))
    rng.shuffle(order)
    split = {
        "demos": order[:4],
        "validation": sorted(order[4 : 4 + n_validation]),
        "test": sorted(order[4 + n_validation :]),
    }
    for name, idx in split.items():
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(items[i]) + "\n" for i in idx), encoding="utf-8")
    train = []
    for phrasing in PHRASINGS:  # one block a wording, each over every country (shuffled): the first n cover all
        block = [{"question": phrasing.format(c=c), "answer": f"{c}: {cap}"} for c, cap in pairs]
        rng.shuffle(block)
        train += block
    (HERE / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")


if __name__ == "__main__":
    main()
