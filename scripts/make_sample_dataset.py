"""Write the built-in sample dataset, resources/sample/sample.jsonl (alpaca format).

    python scripts/make_sample_dataset.py [--out PATH]

The output is deterministic: the same script always writes the same bytes, so the committed
file can be checked with ``git diff --exit-code`` after running it.

The dataset is small (about 150 records) and *learnable*: every answer is short, correct and
ends with the same signature line, SIGNATURE. A few dozen QLoRA steps on the built-in
SmolLM2-135M-Instruct teach the model to sign its answers, which the base model never does,
so a first-time user sees the adapter work (benchmarks/sample_dataset_learning.py measures
it). The questions vary: capitals, arithmetic, definitions, opposites, unit conversions,
sorting numbers given in the ``input`` field. HELD_OUT prompts are never in the dataset; the
benchmark asks them before and after training.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SIGNATURE = "— answered by QLoRA Studio"
SEED = 20260101
OUT = Path(__file__).resolve().parents[1] / "resources" / "sample" / "sample.jsonl"

HELD_OUT = (
    "What is the capital of Italy?",
    "What is 23 plus 19?",
    "What is a verb?",
)

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Brazil", "Brasília"),
    ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"),
    ("India", "New Delhi"),
    ("China", "Beijing"),
    ("South Korea", "Seoul"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"),
    ("Switzerland", "Bern"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"),
    ("New Zealand", "Wellington"),
]

DEFINITIONS = [
    ("a noun", "A noun is a word that names a person, place, thing or idea."),
    ("an adjective", "An adjective is a word that describes a noun, such as 'red' or 'tall'."),
    (
        "a prime number",
        "A prime number is a whole number greater than 1 whose only divisors are 1 and itself.",
    ),
    (
        "photosynthesis",
        "Photosynthesis is how plants use sunlight, water and carbon dioxide to "
        "make sugar and oxygen.",
    ),
    ("gravity", "Gravity is the force that pulls masses toward each other."),
    ("a mammal", "A mammal is a warm-blooded animal that has hair and feeds its young milk."),
    ("an atom", "An atom is the smallest unit of a chemical element."),
    ("a triangle", "A triangle is a flat shape with three straight sides."),
    ("an island", "An island is a piece of land surrounded by water."),
    ("a volcano", "A volcano is an opening in the Earth's crust where molten rock escapes."),
    (
        "democracy",
        "Democracy is government by the people, usually through elected representatives.",
    ),
    ("a fraction", "A fraction is a number that represents part of a whole, such as 1/2."),
    ("evaporation", "Evaporation is when a liquid turns into a gas, like water drying in the sun."),
    ("a synonym", "A synonym is a word that means the same as another word."),
    ("an algorithm", "An algorithm is a step-by-step procedure for solving a problem."),
    ("a glacier", "A glacier is a large, slow-moving mass of ice on land."),
    ("a comet", "A comet is a ball of ice and dust that orbits the Sun."),
    ("an ecosystem", "An ecosystem is a community of living things and their environment."),
    ("a continent", "A continent is one of the Earth's seven large land masses."),
    ("a haiku", "A haiku is a short Japanese poem of three lines with 5, 7 and 5 syllables."),
    ("inflation", "Inflation is the general rise of prices over time."),
    ("a vaccine", "A vaccine trains the immune system to recognize and fight a disease."),
    ("a circle", "A circle is the set of points at the same distance from a centre."),
    ("a planet", "A planet is a large body that orbits a star and has cleared its orbit."),
]

OPPOSITES = [
    ("hot", "cold"),
    ("up", "down"),
    ("fast", "slow"),
    ("light", "dark"),
    ("early", "late"),
    ("open", "closed"),
    ("full", "empty"),
    ("old", "young"),
    ("strong", "weak"),
    ("happy", "sad"),
    ("wet", "dry"),
    ("loud", "quiet"),
    ("high", "low"),
    ("rich", "poor"),
    ("begin", "end"),
    ("push", "pull"),
    ("win", "lose"),
    ("inside", "outside"),
]

UNITS = [
    ("minutes", "hours", 60),
    ("seconds", "minutes", 60),
    ("hours", "days", 24),
    ("days", "weeks", 7),
    ("months", "years", 12),
    ("centimetres", "metres", 100),
    ("metres", "kilometres", 1000),
    ("grams", "kilograms", 1000),
    ("millilitres", "litres", 1000),
]

FACTS = [
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the largest planet in the Solar System?", "Jupiter is the largest planet."),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth."),
    ("At what temperature does water freeze in Celsius?", "Water freezes at 0 °C."),
    (
        "At what temperature does water boil at sea level in Celsius?",
        "Water boils at 100 °C at sea level.",
    ),
    ("What gas do humans need to breathe?", "Humans need oxygen to breathe."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What is the largest ocean on Earth?", "The Pacific is the largest ocean on Earth."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
]


def _answer(text: str) -> str:
    return f"{text}\n\n{SIGNATURE}"


def _arithmetic(rng: random.Random, count: int) -> list[dict]:
    records, seen = [], set(HELD_OUT)
    while len(records) < count:
        op = rng.choice(("plus", "minus", "times"))
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        if op == "minus" and b > a:
            a, b = b, a
        if op == "times":
            a, b = a % 13 + 2, b % 11 + 2
        result = {"plus": a + b, "minus": a - b, "times": a * b}[op]
        question = f"What is {a} {op} {b}?"
        if question in seen:
            continue
        seen.add(question)
        records.append(
            {"instruction": question, "input": "", "output": _answer(f"{a} {op} {b} is {result}.")}
        )
    return records


def _sorting(rng: random.Random, count: int) -> list[dict]:
    records = []
    for _ in range(count):
        numbers = rng.sample(range(1, 100), rng.randint(3, 5))
        order = rng.choice(("smallest to largest", "largest to smallest"))
        ordered = sorted(numbers, reverse=order.startswith("largest"))
        records.append(
            {
                "instruction": f"Sort these numbers from {order}.",
                "input": ", ".join(map(str, numbers)),
                "output": _answer(f"From {order}: {', '.join(map(str, ordered))}."),
            }
        )
    return records


def build(seed: int = SEED) -> list[dict]:
    """The records, in a fixed shuffled order."""
    rng = random.Random(seed)
    records = [
        {
            "instruction": f"What is the capital of {country}?",
            "input": "",
            "output": _answer(f"The capital of {country} is {city}."),
        }
        for country, city in CAPITALS
    ]
    records += [
        {"instruction": f"What is {term}?", "input": "", "output": _answer(text)}
        for term, text in DEFINITIONS
    ]
    records += [
        {
            "instruction": f"What is the opposite of '{word}'?",
            "input": "",
            "output": _answer(f"The opposite of '{word}' is '{other}'."),
        }
        for word, other in OPPOSITES
    ]
    for small, big, factor in UNITS:
        n = rng.randint(2, 9)
        records.append(
            {
                "instruction": f"How many {small} are in {n} {big}?",
                "input": "",
                "output": _answer(f"There are {n * factor} {small} in {n} {big}."),
            }
        )
    records += [{"instruction": q, "input": "", "output": _answer(a)} for q, a in FACTS]
    records += _arithmetic(rng, 36)
    records += _sorting(rng, 14)
    assert not {r["instruction"] for r in records} & set(HELD_OUT)
    rng.shuffle(records)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    args = parser.parse_args(argv)
    records = build()
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    print(f"wrote {len(records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
