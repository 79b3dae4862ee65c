"""Writes the atlas task: a document of invented facts (countries of an invented archipelago and their
capitals) that no base model can know, and questions about them. Deterministic: `python make_data.py`.

- document.md: the facts, one short paragraph per country (the suite's `context.document`);
- validation.jsonl / test.jsonl: "What is the capital of X?" for disjoint sets of countries, with four capitals
  of the atlas to choose from (scored by log-likelihood: a 135M model cannot yet write the answer out from a
  page of text, but it can tell which of four names the page gives);
- train.jsonl: the same facts asked in other words ("Name the capital city of X."), for every country:
  the labelled inputs a `train_split` source would draw (an oracle: a user rarely has them).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "pl", "st", "tr"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "n", "r", "l", "s", "th", "m", "x"]
STEMS = [
    "Red",
    "Blue",
    "Green",
    "Gold",
    "Silver",
    "Stone",
    "Iron",
    "Snow",
    "Sun",
    "Moon",
    "Star",
    "Wind",
    "Rain",
    "Fire",
    "Ice",
    "Oak",
    "Pine",
    "Rose",
    "Salt",
    "Sand",
    "Cloud",
    "Storm",
    "Frost",
    "Amber",
]
PLACES = [
    "Ash",
    "Brook",
    "Cole",
    "Dale",
    "Elm",
    "Fern",
    "Glen",
    "Hart",
    "Holly",
    "Kings",
    "Lark",
    "Mill",
    "North",
    "Oat",
    "Pond",
    "Queens",
    "River",
    "Shep",
    "Thorn",
    "Well",
    "West",
    "York",
    "Bridge",
    "Lang",
]


def word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)).capitalize()


def question(pairs: list[tuple[str, str]], i: int, text: str, values: list[str], rng: random.Random) -> dict:
    """One item: the question and four values of the atlas to choose from, the right one (values[i]) at a
    seeded place."""
    others = rng.sample([v for j, v in enumerate(values) if j != i], 3)
    label = rng.randrange(4)
    return {
        "question": text,
        "answer": values[i],
        "choices": [*others[:label], values[i], *others[label:]],
        "label": label,
    }


def main(n: int = 12, seed: int = 7) -> None:
    rng = random.Random(seed)
    names: set[str] = set()
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        country = rng.choice(STEMS) + rng.choice(["land", "mark", "ria", "stan"])
        capital = rng.choice(PLACES) + rng.choice(["ford", "bury", "ton", "port", "field", "haven"])
        if country in names or capital in names:
            continue
        names |= {country, capital}
        pairs.append((country, capital))
    trades = ["salt", "amber", "wool", "glass", "copper", "tea", "silk", "timber", "honey", "pearls", "tin", "linen"]
    rng.shuffle(trades)
    paragraphs = [
        "# The Vell Archipelago: an atlas\n\nThe Vell Archipelago is a chain of islands in the Northern Sea. "
        f"It has {n} countries. Each country has one capital city, named below."
    ]
    for i, (country, capital) in enumerate(pairs):
        paragraphs.append(f"The capital of {country} is {capital}. {capital} is known for its {trades[i]} trade.")
    (HERE / "document.md").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    items = [
        question(pairs, i, f"What is the capital of {c}?", [cap for _, cap in pairs], rng)
        for i, (c, _) in enumerate(pairs)
    ]
    items += [
        question(pairs, i, f"What is {cap} known for?", [f"its {t} trade" for t in trades[:n]], rng)
        for i, (_, cap) in enumerate(pairs)
    ]
    order = list(range(len(items)))
    rng.shuffle(order)
    split = {"validation": sorted(order[:8]), "test": sorted(order[8:])}
    for name, idx in split.items():
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(items[i]) + "\n" for i in idx), encoding="utf-8")
    train = [
        question(pairs, i, f"Name the capital city of {c}.", [cap for _, cap in pairs], rng)
        for i, (c, _) in enumerate(pairs)
    ]
    (HERE / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")


if __name__ == "__main__":
    main()
