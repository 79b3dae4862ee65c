"""Write the JSONL splits of the local quickstart tasks (stdlib only, deterministic).

Tasks:
  plural     generate_until: a singular English noun -> its plural ("box" -> "boxes").
  is_animal  multiple_choice: a word -> "yes" if it names an animal, else "no".

A bare word alone does not say which job is asked; the suite's context (instruction and
demonstrations) does. Train, test and demos never share an input.

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
decimal percent equation answer lesson exam test grade student pupil classroom teacher principal uniform
sweater hoodie vest blouse tie collar sleeve pocket zipper button sneaker sandal slipper helmet mask goggle
bucket spade trowel hose sprinkler seed plant flower tree bush vine root stem petal thorn acorn pine
""".split()

# Nouns with an irregular plural (checked by hand).
IRREGULAR = {
    "man": "men", "woman": "women", "child": "children", "tooth": "teeth", "foot": "feet", "goose": "geese",
    "knife": "knives", "wife": "wives", "wolf": "wolves", "half": "halves", "loaf": "loaves", "shelf": "shelves",
    "thief": "thieves", "calf": "calves", "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes",
    "echo": "echoes", "person": "people", "scarf": "scarves",
}

# Unambiguous animal names (no brand, tool or sport homonyms such as "jaguar", "crane" or "cricket").
ANIMALS = """
dog cat horse cow pig sheep goat donkey mule camel llama alpaca zebra giraffe elephant rhinoceros hippopotamus lion
tiger leopard cheetah lynx bobcat cougar wolf fox coyote jackal hyena bear panda koala kangaroo wallaby wombat
platypus opossum raccoon skunk badger otter beaver weasel ferret squirrel chipmunk hamster gerbil rabbit hare
hedgehog porcupine shrew monkey gorilla chimpanzee orangutan baboon lemur sloth armadillo anteater aardvark moose
elk deer reindeer antelope gazelle bison buffalo yak walrus dolphin whale porpoise manatee shark salmon trout tuna
cod herring sardine goldfish catfish carp eel stingray swordfish seahorse octopus squid jellyfish starfish crab
lobster shrimp oyster clam snail slug earthworm leech spider scorpion ant bee wasp hornet butterfly moth beetle
ladybug grasshopper cockroach termite mosquito flea dragonfly firefly caterpillar centipede millipede eagle hawk
falcon owl vulture parrot pigeon dove sparrow robin crow raven swan goose duck chicken hen rooster peacock ostrich
emu penguin flamingo pelican stork heron seagull woodpecker hummingbird kingfisher canary finch cobra viper
rattlesnake lizard iguana gecko chameleon crocodile alligator turtle tortoise frog toad salamander newt tadpole
mongoose meerkat lemming vole marmot groundhog gopher tapir okapi warthog boar ibex caribou kitten puppy
lamb piglet duckling pony stallion mare bull poodle beagle terrier bulldog collie dachshund albatross magpie
starling wren nightingale cuckoo toucan macaw cockatoo parakeet quail pheasant partridge grouse ibis puffin
halibut mackerel anchovy piranha barracuda minnow guppy aphid gnat cicada mantis weevil bumblebee hippo rhino
snake cheetah hyena camel dingo bandicoot chinchilla capybara hummingbird narwhal orca walrus lobster krill
sturgeon flounder tarantula wolverine mink jackrabbit
""".split()

# Things that are clearly not animals: objects, plants, foods without meat, places, materials, weather.
NOT_ANIMALS = """
table chair lamp door window bed pillow blanket carpet mirror clock cup plate bowl spoon fork bottle jar kettle
oven fridge sink towel bucket basket candle drawer hammer nail screw shovel rake ladder rope chain key bell
button zipper needle thread ribbon sock shoe boot hat coat jacket shirt skirt glove belt necklace bracelet wallet
umbrella pencil pen eraser ruler book notebook envelope poster painting camera phone computer keyboard cable
printer guitar drum violin flute trumpet ticket coin gift balloon car truck bicycle train plane boat ship rocket
wagon tractor helicopter engine wheel tire house school hospital hotel castle tower bridge road street garden
park village island mountain river lake valley forest desert ocean planet cloud storm apple banana orange lemon
grape pear plum melon carrot onion cookie cake pie bean pea noodle pancake muffin biscuit pickle rice bread
soup salad pizza pasta potato tomato cucumber lettuce cabbage pumpkin garlic pepper mushroom
tree flower rose tulip daisy oak pine maple cactus fern moss grass bush vine seed acorn sand stone rock brick
glass metal iron gold silver copper wood paper plastic cotton rubber cement concrete steel
rain snow wind thunder lightning fog ice fire smoke sun moon star sky rainbow volcano cave beach hill cliff
sofa couch stool cushion curtain rug vase broom mop soap bag suitcase backpack tray mug pot teapot saucer
cupboard toaster blender microwave heater fan lightbulb battery laptop tablet website email movie album
stadium trophy medal tent cabin barn fence gate wall roof floor ceiling chimney garage kitchen bathroom closet
desk elevator tunnel highway airport station harbor market bakery bank office museum theater cinema library
temple palace cottage apartment skyscraper envelope receipt contract document folder magazine newspaper
calendar diary map globe compass anchor sail canoe kayak raft yacht submarine ferry taxi van scooter motorcycle
skateboard sled helmet sweater scarf sandal slipper sneaker necklace earring lipstick perfume toothbrush
toothpaste shampoo comb razor scissors stapler calculator crayon chalk blackboard whistle trumpet piano harp
cello saxophone clarinet accordion banjo umbrella puzzle dice chess domino marble yoyo frisbee hammock
lantern flashlight candle torch matchbox bucket barrel crate carton parcel package ladder wheelbarrow
""".split()


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
    test, train = nouns[:160], nouns[160:]
    doc = lambda n: {"question": n, "answer": plural(n)}  # noqa: E731
    write(HERE / "plural", {"demos": [doc(n) for n in demos], "test": [doc(n) for n in test],
                            "train": [doc(n) for n in train]})


def make_is_animal(rng: random.Random) -> None:
    """is_animal: balanced yes/no; demos alternate yes and no."""
    yes, no = unique(ANIMALS), unique(NOT_ANIMALS)
    assert not set(yes) & set(no), set(yes) & set(no)
    rng.shuffle(yes)
    rng.shuffle(no)
    n = min(len(yes), len(no))
    yes, no = yes[:n], no[:n]
    doc = lambda w, a: {"question": w, "answer": a}  # noqa: E731
    demos = [doc(w, a) for pair in zip(yes[:4], no[:4], strict=True) for w, a in zip(pair, ("yes", "no"), strict=True)]
    test = [doc(w, "yes") for w in yes[4:84]] + [doc(w, "no") for w in no[4:84]]
    train = [doc(w, "yes") for w in yes[84:]] + [doc(w, "no") for w in no[84:]]
    rng.shuffle(test)
    rng.shuffle(train)
    write(HERE / "is_animal", {"demos": demos, "test": test, "train": train})


if __name__ == "__main__":
    make_plural(random.Random(SEED))
    make_is_animal(random.Random(SEED))
