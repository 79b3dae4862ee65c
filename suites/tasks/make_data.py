"""Write the JSONL splits of the local quickstart tasks (stdlib only, deterministic).

Tasks:
  plural       generate_until: a singular English noun -> its plural ("box" -> "boxes").
  name_gender  multiple_choice: a first name -> "girl" or "boy".
  date_iso     generate_until: a date in words -> ISO 8601 ("5 March 2021" -> "2021-03-05"), ~10 tokens.
  date_iso_many  date_iso's test, validation and train splits with a pool of 256 demonstrations (its first 16
               are date_iso's), for many-shot contexts of several thousand tokens.

A bare word alone does not say which job is asked; the suite's context (instruction and
demonstrations) does.

Splits (DESIGN.md section 9): train = distillation inputs z, validation = everything that chooses
(Optuna objective, pruning, held-out KL), test = reported only, demos = the context's demonstrations.
The four never share an input. Each pool is shuffled once with a seeded `random.Random`; test is taken
first (so it is the same as before validation existed), validation next, train is the rest.

Run: python suites/tasks/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
HERE = Path(__file__).resolve().parent

# Nouns whose plural follows the spelling rule in `plural()` (+s, +es after s/x/z/ch/sh, consonant+y -> ies).
REGULAR = """
table chair lamp door window bed pillow blanket carpet mirror clock cup plate bowl spoon fork bottle jar kettle pan
oven fridge sink towel bucket basket candle drawer hammer nail screw drill saw shovel rake ladder rope chain key lock
bell button zipper needle thread ribbon sock shoe boot hat cap coat jacket shirt skirt glove belt ring necklace
bracelet earring wallet purse umbrella pencil pen eraser ruler book notebook envelope stamp letter card map poster
picture painting camera phone computer keyboard screen cable printer speaker guitar drum violin flute trumpet song
ticket coin dollar gift toy doll ball kite puzzle game balloon car truck bicycle train plane boat ship rocket wagon
tractor helicopter engine wheel tire house school hospital hotel castle tower bridge road street garden park farm
village town island mountain river lake valley forest desert ocean planet star cloud storm apple banana orange lemon
grape pear plum melon carrot onion cookie cake pie egg nut bean pea noodle pancake muffin biscuit cracker pickle dog
cat horse cow pig goat duck chicken rabbit bird snake frog lion tiger bear monkey donkey elephant camel zebra
eagle owl parrot spider bee ant beetle worm whale shark dolphin penguin squirrel teacher doctor farmer driver singer
painter baker nurse pilot soldier king queen prince friend brother sister cousin uncle aunt girl boy hand arm leg
finger toe ear eye nose lip knee elbow shoulder idea dream word name question answer problem plan holiday birthday
week month year day hour minute second box fox bus dish brush watch match bench witch glass dress kiss class wish
branch lunch church sandwich peach beach coach torch switch inch tax city baby lady party story cherry berry penny
puppy pony family country library factory army body diary spy candy daisy hobby jelly lily copy strawberry
blueberry cloud river circle square triangle rectangle line dot arrow flag tent cabin barn fence gate wall
floor ceiling stair window chimney garage kitchen bathroom bedroom hallway closet desk sofa couch stool cushion
curtain rug vase bin broom mop sponge soap bucket bag suitcase backpack box jar lid cork straw napkin tray mug pot
teapot saucer cupboard cooker toaster blender mixer microwave heater fan lightbulb socket plug wire battery charger
laptop tablet pad monitor router server website email message signal channel program movie show album
concert ticket stadium player coach team match goal point score medal trophy prize race runner swimmer jumper
skater climber hiker sailor captain pirate knight wizard giant dragon unicorn robot alien monster ghost angel
shadow mirror window candle lantern torch flashlight compass anchor sail mast oar paddle canoe kayak raft yacht
submarine ferry taxi van jeep scooter motorcycle skateboard sled trolley carriage cart airport station harbor
market shop store bakery bank office museum theater cinema library temple palace cottage apartment building
skyscraper elevator escalator tunnel highway lane avenue corner square crossing sign ticket receipt invoice
contract document folder file page chapter paragraph sentence verb noun adjective number digit fraction
decimal equation answer lesson exam test grade student pupil classroom teacher principal uniform
sweater hoodie vest blouse tie collar sleeve pocket zipper button sneaker sandal slipper helmet mask
bucket spade trowel hose sprinkler seed plant flower tree bush vine root stem petal thorn acorn pine
""".split()

# Nouns with an irregular plural (checked by hand).
IRREGULAR = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "tooth": "teeth",
    "foot": "feet",
    "goose": "geese",
    "knife": "knives",
    "wife": "wives",
    "wolf": "wolves",
    "half": "halves",
    "loaf": "loaves",
    "shelf": "shelves",
    "thief": "thieves",
    "calf": "calves",
    "potato": "potatoes",
    "tomato": "tomatoes",
    "hero": "heroes",
    "echo": "echoes",
    "person": "people",
    "scarf": "scarves",
}

# Common first names with a clear gender (names used for both, such as "Jordan" or "Morgan", are left out).
FEMALE = """
Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa Betty Margaret Sandra Kimberly
Emily Donna Michelle Dorothy Carol Amanda Melissa Deborah Stephanie Rebecca Sharon Laura Cynthia Kathleen Amy
Shirley Angela Helen Anna Brenda Pamela Nicole Emma Samantha Katherine Christine Debra Rachel Catherine Carolyn
Janet Ruth Maria Heather Diane Virginia Julie Joyce Victoria Olivia Christina Lauren Joan Judith Megan Cheryl Hannah
Martha Jacqueline Gloria Ann Teresa Kathryn Sara Janice Alice Doris Abigail Julia Judy Grace Denise Amber Marilyn
Danielle Theresa Sophia Marie Diana Brittany Natalie Isabella Charlotte Rose Kayla Lily Chloe Ella Ava Mia Zoe Nora
Hazel Violet Aurora Stella Lucy Claire Audrey Bella Caroline Eleanor Ellie Ivy Leah Lillian Maya Naomi Penelope Ruby
Sadie Scarlett Sophie Willow Alexandra Amelia Anastasia Beatrice Bethany Bridget Camila Cecilia Clara Daisy Daphne
Delilah Eliza Eloise Esther Eva Fiona Florence Gabriella Georgia Gwendolyn Harriet Heidi Irene Isabel Jasmine
Josephine Juliet Katie Lydia Mabel Madeline Margot Matilda Melanie Miranda Molly Nina Paula Phoebe Priscilla
Rosalind Sabrina Serena Sylvia Tiffany Ursula Valerie Vanessa Wendy Yvonne Agnes Edith Ethel Gertrude Mildred Louise
Lucille Marjorie Mariana Veronica Monica Sonia Tanya Tina Vera Wilma Rosemary Olga Natasha Svetlana Ingrid Greta
Helga Brigitte Annika Astrid Freya Elsa Emilia Gabrielle Genevieve Isabelle Juliette Mathilde Sylvie Francesca
Giulia Lucia Rosa Carmen Dolores Elena Gabriela Marisol Pilar Priya Aisha Fatima Leila Yasmin Anjali Deepika Ophelia
Cordelia Rosalie Annabelle Arabella Adeline Alicia Allison Angelina Annette Antonia Bernadette Brianna Carla
Cassandra Celeste Colleen Constance Crystal Deirdre Eileen Elaine Elise Ellen Emilie Erica Estelle Eunice Felicity
Gina Hilda Imogen Iris Jane Jenna Jillian Joanna Jocelyn Josie Karina Katrina Kristen Lena Lorraine Louisa Lucinda
Mandy Marcia Marina Maureen Nadia Nellie Noreen Pauline Peggy Rita Roberta Rosalyn Sally Selena Sheila Susanna
Tamara Thelma Ulrika Vivienne Winifred Yolanda Zelda
""".split()

MALE = """
James Robert John Michael David William Richard Joseph Thomas Charles Christopher Daniel Matthew Anthony Mark Donald
Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy Ronald Edward Jason Jeffrey Ryan Jacob Gary Nicholas
Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel Gregory Alexander Frank Patrick Raymond Jack Dennis
Jerry Tyler Aaron Jose Adam Nathan Henry Douglas Zachary Peter Kyle Ethan Walter Noah Jeremy Christian Keith Roger
Gerald Harold Sean Austin Carl Arthur Lawrence Dylan Jesse Bryan Billy Joe Bruce Gabriel Albert Alan Juan Wayne
Elijah Randy Roy Vincent Ralph Eugene Russell Bobby Mason Philip Louis Liam Oliver Lucas Leo Oscar Hugo Felix Max
Theodore Sebastian Isaac Owen Caleb Luke Wyatt Levi Isaiah Connor Adrian Julian Miles Jasper Silas Declan Finn Harry
Archie Alfie Freddie Edgar Edmund Ernest Frederick Herbert Howard Hubert Leonard Martin Melvin Norman Oswald Percy
Reginald Rupert Stanley Victor Wilbur Winston Barry Clive Colin Derek Desmond Duncan Gordon Graham Malcolm Neil
Nigel Trevor Vernon Warren Wesley Xavier Zane Ahmed Mohammed Omar Tariq Hassan Rahul Arjun Vikram Ravi Hiroshi Kenji
Takeshi Pierre Jacques Francois Hans Klaus Dieter Sven Lars Erik Olaf Ivan Dmitri Sergei Vladimir Boris Igor Carlos
Diego Miguel Pedro Rafael Alejandro Fernando Javier Manuel Antonio Giovanni Giuseppe Marco Luca Matteo Lorenzo
Francesco Paolo Stefano Abraham Alfred Ambrose Angus Anton Arnold Barnaby Bernard Bradley Calvin Cedric Chester
Clarence Clifford Clyde Conrad Cornelius Curtis Cyril Damian Dominic Edwin Emmett Everett Ezra Floyd Fraser Garrett
Geoffrey Gilbert Grant Gregor Gustav Harvey Hector Horace Ian Jeffery Jerome Julius Kurt Lance Lionel Luther Marcus
Marvin Maxwell Nathaniel Neville Otto Preston Quentin Randall Reuben Roland Ross Rudolph Rufus Simon Solomon Spencer
Stuart Thaddeus Tobias Todd Travis Troy Vaughn Wallace Wilfred Zachariah
""".split()


# Demonstrations for name_gender: the best of 30 random draws (4 girls, 4 boys, random order) from names outside
# the test split, scored by the teacher's accuracy on training names; the order sets the model's girl/boy bias.
NAME_DEMOS = ["Alfie", "Nora", "Silas", "Edith", "Aaron", "Wyatt", "Barbara", "Ava"]


def plural(noun: str) -> str:
    """The regular English plural of `noun` (irregular nouns are looked up first)."""
    if noun in IRREGULAR:
        return IRREGULAR[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def unique(words: list[str]) -> list[str]:
    """Words in first-seen order without repeats."""
    return list(dict.fromkeys(words))


def write(folder: Path, splits: dict[str, list[dict]]) -> None:
    """One JSONL file per split."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in splits.items():
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
    print(folder.name, {k: len(v) for k, v in splits.items()})


def make_plural(rng: random.Random) -> None:
    """plural: demos are hand-picked to show each spelling rule once."""
    demos = ["apple", "box", "city", "knife", "child", "brush", "monkey", "tooth"]
    nouns = [n for n in unique(REGULAR + list(IRREGULAR)) if n not in demos]
    for n in nouns:  # the regular list must not hide words the spelling rule gets wrong
        assert n in IRREGULAR or not n.endswith(("o", "f", "fe")), n
    rng.shuffle(nouns)
    test, validation, train = nouns[:160], nouns[160:260], nouns[260:]
    doc = lambda n: {"question": n, "answer": plural(n)}  # noqa: E731
    write(
        HERE / "plural",
        {
            "demos": [doc(n) for n in demos],
            "test": [doc(n) for n in test],
            "validation": [doc(n) for n in validation],
            "train": [doc(n) for n in train],
        },
    )


def make_name_gender(rng: random.Random) -> None:
    """name_gender: balanced girl/boy in every split; test does not depend on which names are the demos."""
    girls, boys = unique(FEMALE), unique(MALE)
    assert not set(girls) & set(boys), set(girls) & set(boys)
    rng.shuffle(girls)
    rng.shuffle(boys)
    n = min(len(girls), len(boys))
    girls, boys = girls[:n], boys[:n]
    label = {**dict.fromkeys(girls, "girl"), **dict.fromkeys(boys, "boy")}
    doc = lambda w: {"question": w, "answer": label[w]}  # noqa: E731
    assert all(w in girls[80:] + boys[80:] for w in NAME_DEMOS), NAME_DEMOS
    rest_girls = [w for w in girls[80:] if w not in NAME_DEMOS]
    rest_boys = [w for w in boys[80:] if w not in NAME_DEMOS]
    test = [doc(w) for w in girls[:80] + boys[:80]]
    validation = [doc(w) for w in rest_girls[:50] + rest_boys[:50]]
    train = [doc(w) for w in rest_girls[50:] + rest_boys[50:]]
    rng.shuffle(test)
    rng.shuffle(train)
    rng.shuffle(validation)
    write(
        HERE / "name_gender",
        {"demos": [doc(w) for w in NAME_DEMOS], "test": test, "validation": validation, "train": train},
    )


MONTHS = "January February March April May June July August September October November December".split()


def date_doc(rng: random.Random, seen: set[tuple[int, int, int]]) -> dict | None:
    """A fresh date (None when the draw repeats one in `seen`), US or UK order."""
    year, month, day = rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)
    us = rng.random() < 0.5
    if (year, month, day) in seen:
        return None
    seen.add((year, month, day))
    text = f"{MONTHS[month - 1]} {day}, {year}" if us else f"{day} {MONTHS[month - 1]} {year}"
    return {"question": text, "year": year, "month": month, "day": day}


def make_date_iso(rng: random.Random) -> tuple[dict[str, list[dict]], set[tuple[int, int, int]]]:
    """date_iso: a date written out in words, US or UK order -> ISO 8601 (e.g. "5 March 2021" -> "2021-03-05").

    The answer is stored as year/month/day integers and formatted by the task YAML's doc_to_target:
    the JSON loader (pyarrow) would turn an ISO date string into a timestamp ("2021-03-05 00:00:00").
    Dates are drawn without repeats (one date never appears in two splits, in either spelling); the
    first 16 are the demos, then 160 test, 100 validation and 290 train.
    """
    seen: set[tuple[int, int, int]] = set()
    docs: list[dict] = []
    while len(docs) < 16 + 160 + 100 + 290:
        d = date_doc(rng, seen)
        if d is not None:
            docs.append(d)
    splits = {"demos": docs[:16], "test": docs[16:176], "validation": docs[176:276], "train": docs[276:]}
    write(HERE / "date_iso", splits)
    return splits, seen


def make_date_iso_many(rng: random.Random, base: dict[str, list[dict]], seen: set[tuple[int, int, int]]) -> None:
    """date_iso_many: date_iso's splits unchanged (so the two tasks' figures compare item by item) and 256
    demonstrations: date_iso's 16, then 240 more dates that no split holds (drawn from their own generator,
    so date_iso's files do not change)."""
    demos = list(base["demos"])
    while len(demos) < 256:
        d = date_doc(rng, seen)
        if d is not None:
            demos.append(d)
    write(HERE / "date_iso_many", {**base, "demos": demos})


if __name__ == "__main__":
    make_plural(random.Random(SEED))
    make_name_gender(random.Random(SEED))
    date_splits, date_seen = make_date_iso(random.Random(SEED))
    make_date_iso_many(random.Random(SEED + 1), date_splits, date_seen)
