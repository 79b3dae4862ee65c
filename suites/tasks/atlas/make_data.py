"""Writes the atlas task: a document of invented facts (countries of an invented archipelago and their
capitals) that no base model can know, and questions about them. Deterministic: `python make_data.py`.

The format is one the embedded SmolLM2-135M can read: the document lists `Country: Capital` lines, the user
names a country and the answer is that country's line, so the model copies the country and the capital follows
by induction from the document. Measured (greedy, this data): with the document and the 4 demonstrations in c
the teacher writes the right line for 9 of the 12 held-out countries (validation 1 of 4, test 8 of 8), with no
context for none; `harness gap suites/document_facts.yaml`: +25 ± 25 points on the 4 validation items. With 24
countries it was 10%, and "What is the capital of X?" answered by the city alone 5% (24) to 25% (12).

- document.md: the facts, one `Country: Capital` line per country (the suite's `context.document`);
- demos.jsonl: four countries with their lines (the few-shot split: how to answer);
- validation.jsonl / test.jsonl: the other countries, disjoint sets, answered by their line;
- train.jsonl: every country's fact asked in other words ("The capital of X"): the labelled inputs a
  `train_split` source would draw (an oracle: a user with a document rarely has them).
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


def main(n: int = 16, seed: int = 7) -> None:
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
    split = {"demos": order[:4], "validation": sorted(order[4:8]), "test": sorted(order[8:])}
    for name, idx in split.items():
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(items[i]) + "\n" for i in idx), encoding="utf-8")
    train = [{"question": f"The capital of {c}", "answer": f"{c}: {cap}"} for c, cap in pairs]
    (HERE / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")


if __name__ == "__main__":
    main()
