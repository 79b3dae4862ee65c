"""Writes the atlas task: a document of invented facts (countries of an invented archipelago and their
capitals) that no base model can know, and questions about them. Deterministic: `python make_data.py`.

- document.md: the facts, one line per country (the suite's `context.document`);
- demos.jsonl: four questions about the document with their answers (the few-shot split: how to answer);
- validation.jsonl / test.jsonl: "What is the capital of X?" for disjoint sets of the other countries;
- train.jsonl: every country's fact asked in other words ("Name the capital city of X."): the labelled inputs
  a `train_split` source would draw (an oracle: a user with a document rarely has them).
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


def main(n: int = 24, seed: int = 7) -> None:
    rng = random.Random(seed)
    stems, places = rng.sample(STEMS, n), rng.sample(PLACES, n)
    pairs = [
        (stem + rng.choice(["land", "mark", "ria", "stan"]), place + rng.choice(["ford", "bury", "ton", "port"]))
        for stem, place in zip(stems, places, strict=True)
    ]
    lines = [f"- The capital of {country} is {capital}." for country, capital in pairs]
    head = f"# The Vell Archipelago\n\nThe Vell Archipelago has {n} countries. Their capitals:\n\n"
    (HERE / "document.md").write_text(head + "\n".join(lines) + "\n", encoding="utf-8")
    items = [{"question": f"What is the capital of {c}?", "answer": cap} for c, cap in pairs]
    order = list(range(n))
    rng.shuffle(order)
    split = {"demos": order[:4], "validation": sorted(order[4:10]), "test": sorted(order[10:])}
    for name, idx in split.items():
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(items[i]) + "\n" for i in idx), encoding="utf-8")
    train = [{"question": f"Name the capital city of {c}.", "answer": cap} for c, cap in pairs]
    (HERE / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")


if __name__ == "__main__":
    main()
