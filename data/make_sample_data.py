"""Generate a small, synthetic Orca-DPO-style preference data set.

The Hugging Face hub is not reachable from this project's machines, so the
project ships its own sample of preference pairs with the same schema as the
Orca DPO pairs (``system``, ``question``, ``chosen``, ``rejected``).  Every
sentence below was written for this project; nothing is copied from an
existing data set.

Four kinds of pairs are generated (see ``KIND_SHARE``):

* ``arithmetic``  - small sums, differences and products asked in varied ways;
  ``chosen`` states the correct result in a complete sentence, a bare
  equation, or an explanation of the method; ``rejected`` states a result
  that is off by a little, or gives no result at all (evasive, cut off, or
  the same kind of explanation without the number).
* ``facts``       - capitals, counts, colours, opposites, plurals, past tenses
  and animal sounds from small hand-written tables; ``rejected`` is wrong.
* ``helpfulness`` - ``chosen`` answers directly and completely; ``rejected`` is
  evasive, rude, or cut off mid-sentence.
* ``format``      - the question asks for a short answer; ``chosen`` is concise
  and on topic; ``rejected`` rambles, repeats itself, drifts off topic, or is
  condescending.

Usage::

    python data/make_sample_data.py [--seed 0] [--out data/orca_sample]

The output is deterministic for a given seed.  Only the standard library is
used.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

FIELDS = ("system", "question", "chosen", "rejected")
# Extra columns of the held-out rows: the accepted answers (ground truth) where the question has one, and the kind
# of question. The stages read only FIELDS; evaluate.py measures how often a policy's response contains one of the
# answers, overall and per kind.
GOLD = "gold"

N_TRAIN = 3000
N_HELDOUT = 400

# Share of rows per kind (same in both splits).
KIND_SHARE = {
    "arithmetic": 0.25,
    "facts": 0.20,
    "helpfulness": 0.35,
    "format": 0.20,
}

SYSTEM_EMPTY_SHARE = 0.60
MAX_CHOSEN_WORDS = 40
MAX_REJECTED_WORDS = 90
MAX_TOTAL_BYTES = 2_000_000
# No single token (or "ends with . ! ?" / length) may separate chosen from
# rejected better than this on its own.
MAX_SINGLE_FEATURE_ACC = 0.80

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are an AI assistant. Answer briefly.",
    "You are a friendly assistant. Keep your answers short and clear.",
    "You are a helpful assistant who answers in one or two sentences.",
    "You are an AI assistant that helps people find information.",
    "Answer the user's question accurately and concisely.",
    "You are a patient tutor. Give short, correct answers.",
    "You are a polite assistant.",
    "You are a knowledgeable assistant. Be direct.",
    "You are an AI assistant. Give a clear and complete answer.",
    "You are a helpful assistant for students.",
    "Reply in plain, simple English.",
    "You are a careful assistant. Check facts and arithmetic before answering.",
    "You are an AI assistant. Be accurate, brief and kind.",
]

# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def num_words(n: int) -> str:
    """English words for 0 <= n < 1000."""
    assert 0 <= n < 1000, n
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else "-" + _ONES[ones])
    hundreds, rest = divmod(n, 100)
    head = _ONES[hundreds] + " hundred"
    return head if rest == 0 else head + " and " + num_words(rest)


def cap_first(text: str) -> str:
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1 :]
        if ch.isdigit():
            return text
    return text


def low_first(text: str) -> str:
    """Lower-case the first letter unless the first word looks like a name."""
    first = text.split(" ", 1)[0].strip("\"'")
    if first in ("I", "I'm") or (len(first) > 1 and first[1:].lower() != first[1:]):
        return text
    if first in PROPER_STARTS:
        return text
    return text[:1].lower() + text[1:]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def number_gold(n: int) -> list[str]:
    """Accepted spellings of a number in a response: digits and words."""
    if n == 1000:
        return ["1000", "1,000", "one thousand"]
    return [str(n), num_words(n)]


def mentions(text: str, word: str) -> bool:
    """Whole-word, case-insensitive occurrence (a gold answer already in the question proves nothing)."""
    return re.search(rf"(?<![\w-]){re.escape(word.lower())}(?![\w-])", text.lower()) is not None


def words(text: str) -> int:
    return len(text.split())


def ends_sentence(text: str) -> bool:
    """True if the text ends like a finished sentence (maybe inside quotes)."""
    return text.rstrip("\"'").endswith((".", "!", "?"))


# --------------------------------------------------------------------------
# Arithmetic
# --------------------------------------------------------------------------

NAMES = [
    "Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Isla",
    "Jamal", "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Sam",
    "Tomas", "Yuki", "Zara",
]  # fmt: skip
ITEMS = [
    "apples", "books", "coins", "marbles", "pencils", "stickers", "cookies",
    "shells", "stamps", "balloons", "cards", "eggs",
]  # fmt: skip

OPWORD = {"add": "plus", "sub": "minus", "mul": "times"}
OPNAME = {"add": "addition", "sub": "subtraction", "mul": "multiplication"}

# (template, uses symbols).  {a} {b} operands, {r} result.
Q_TEMPLATES = {
    "add": [
        ("What is {a} + {b}?", True),
        ("What is {a} plus {b}?", False),
        ("Calculate {a} + {b}.", True),
        ("Add {a} and {b}.", False),
        ("What do you get if you add {a} and {b}?", False),
        ("What is the sum of {a} and {b}?", False),
        ("{a} + {b} = ?", True),
        ("Please work out {a} plus {b}.", False),
        ("Can you tell me what {a} plus {b} is?", False),
        ("How much is {a} plus {b}?", False),
    ],
    "sub": [
        ("What is {a} - {b}?", True),
        ("What is {a} minus {b}?", False),
        ("Subtract {b} from {a}.", False),
        ("Calculate {a} - {b}.", True),
        ("What do you get if you take {b} away from {a}?", False),
        ("What is the difference between {a} and {b}?", False),
        ("{a} - {b} = ?", True),
        ("How much is {a} minus {b}?", False),
        ("Can you work out {a} minus {b} for me?", False),
    ],
    "mul": [
        ("What is {a} times {b}?", False),
        ("What is {a} x {b}?", True),
        ("Multiply {a} by {b}.", False),
        ("Calculate {a} * {b}.", True),
        ("What is the product of {a} and {b}?", False),
        ("{a} x {b} = ?", True),
        ("How much is {a} times {b}?", False),
        ("What do you get when you multiply {a} by {b}?", False),
    ],
}
A_TEMPLATES = {
    "add": [
        ("{a} plus {b} equals {r}.", False),
        ("The sum of {a} and {b} is {r}.", False),
        ("If you add {a} and {b}, you get {r}.", False),
        ("Adding {b} to {a} gives {r}, so the answer is {r}.", False),
        ("{a} + {b} = {r}, so the answer is {r}.", True),
        ("The answer is {r}, because {a} plus {b} equals {r}.", False),
        ("When you add {a} and {b} together, the result is {r}.", False),
    ],
    "sub": [
        ("{a} minus {b} equals {r}.", False),
        ("If you subtract {b} from {a}, you get {r}.", False),
        ("Taking {b} away from {a} leaves {r}, so the answer is {r}.", False),
        ("{a} - {b} = {r}, so the answer is {r}.", True),
        ("The answer is {r}, because {a} minus {b} equals {r}.", False),
        ("The difference between {a} and {b} is {r}.", False),
    ],
    "mul": [
        ("{a} times {b} equals {r}.", False),
        ("If you multiply {a} by {b}, you get {r}.", False),
        ("The product of {a} and {b} is {r}.", False),
        ("{a} x {b} = {r}, so the answer is {r}.", True),
        ("The answer is {r}, because {a} times {b} equals {r}.", False),
        ("Multiplying {a} by {b} gives {r}.", False),
    ],
}
WORD_PROBLEMS = {
    "add": [
        (
            "{name} has {a} {items} and gets {b} more. How many {items} does {name} have now?",
            [
                "{name} now has {r} {items}, because {a} plus {b} equals {r}.",
                "{a} + {b} = {r}, so {name} has {r} {items} now.",
                "Adding {b} to {a} gives {r}, so {name} has {r} {items}.",
            ],
        ),
        (
            "There are {a} {items} in a box and someone puts in {b} more. How many {items} are in the box?",
            [
                "There are now {r} {items} in the box, because {a} plus {b} equals {r}.",
                "{a} + {b} = {r}, so the box holds {r} {items}.",
            ],
        ),
    ],
    "sub": [
        (
            "{name} had {a} {items} and gave {b} away. How many {items} are left?",
            [
                "{name} has {r} {items} left, because {a} minus {b} equals {r}.",
                "{a} - {b} = {r}, so {name} has {r} {items} left.",
                "Taking {b} away from {a} leaves {r}, so there are {r} {items} left.",
            ],
        ),
    ],
    "mul": [
        (
            "There are {a} bags with {b} {items} in each bag. How many {items} are there in total?",
            [
                "There are {r} {items} in total, because {a} times {b} equals {r}.",
                "{a} x {b} = {r}, so there are {r} {items} altogether.",
            ],
        ),
    ],
}
# Rejections that give no result.  "trunc" ones stop before the result.
NO_RESULT = {
    "any": [
        "I'm not very good at maths, so I'd rather not guess.",
        "Maths questions like this are best checked with a calculator.",
        "The answer depends on how you look at it.",
        "Numbers like {a} and {b} are fun to work with, aren't they?",
        "Let me think about {a} {op} {b} for a moment.",
        "{a} {op} {b} is a number that you can work out yourself.",
        "That is a simple {opname} problem that you can do on a calculator.",
        "I could work that out, but it is good practice for you to try it.",
    ],
    "add": [
        "To find the answer, add {a} and {b} together.",
        "You just need to count {b} more after {a}.",
    ],
    "sub": [
        "To find the answer, subtract {b} from {a}.",
        "You just need to count back {b} from {a}.",
    ],
    "mul": [
        "To find the answer, multiply {a} by {b}.",
        "You can add {a} to itself {b} times to find out.",
    ],
}
NO_RESULT_TRUNC = {
    "add": ["{a} plus {b} equals", "If you add {a} and {b}, you get", "The sum of"],
    "sub": ["{a} minus {b} equals", "If you subtract {b} from {a}, you get"],
    "mul": ["{a} times {b} equals", "If you multiply {a} by {b}, you get"],
}
# Answers that explain the method. With the result they are chosen answers (and, with a wrong result, rejected
# ones); without it they are "no result" rejections - so that the number, not the explanation, decides the pair.
METHOD_OPEN = ["To calculate {e},", "To work out {e},", "To find {e},", "To solve {e},", "To get {e},"]
METHOD_FILL = ["you simply ", "just ", "you need to ", "you can ", ""]
METHOD_BODY = {
    "add": ["add {a} and {b}", "add {b} to {a}", "add the two numbers together", "count on {b} from {a}"],
    "sub": ["subtract {b} from {a}", "take {b} away from {a}", "count back {b} from {a}", "take the smaller one away"],
    "mul": ["multiply {a} by {b}", "multiply the two numbers", "add {a} to itself {b} times", "multiply them together"],
}
METHOD_RESULT = ["{m}, which gives {r}.", "{m}: the answer is {r}.", "{m}, and the result is {r}.", "{m} to get {r}."]
METHOD_NO_RESULT = ["{m}.", "{m}, and that gives you the answer.", "{m} to get the result.", "{m}, which is easy."]
SYMBOL = {"add": "+", "sub": "-", "mul": "x"}

NO_RESULT_WORD = [
    "{name} has some {items} now, but I can't say exactly how many.",
    "That depends on how many {items} {name} wants.",
    "It is hard to count {items} without seeing them.",
    "You would need to count the {items} yourself to know.",
]


def _operands(rng: random.Random, op: str) -> tuple[int, int, int]:
    while True:
        if op == "add":
            if rng.random() < 0.7:
                a, b = rng.randint(2, 20), rng.randint(2, 20)
            else:
                a, b = rng.randint(10, 89), rng.randint(2, 60)
            r = a + b
        elif op == "sub":
            if rng.random() < 0.7:
                r, b = rng.randint(1, 20), rng.randint(2, 20)
            else:
                r, b = rng.randint(1, 60), rng.randint(2, 40)
            a = r + b
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 10)
            r = a * b
        # The result must not equal an operand, so that a "no result" answer
        # that repeats the operands never contains the result by accident.
        if r not in (a, b) and r < 1000:
            return a, b, r


def _wrong_result(rng: random.Random, op: str, a: int, b: int, r: int) -> int:
    while True:
        if op == "mul" and rng.random() < 0.4:
            d = rng.choice([a, b, -a, -b])
        else:
            d = rng.choice([1, -1, 1, -1, 2, -2, 3, -3])
        w = r + d
        if w >= 0 and w != r:
            return w


def _method(rng: random.Random, op: str, symbols: bool, endings: list[str]) -> str:
    """A template that explains how to get the result ({a} {b} {op}, and {r} where the ending has it)."""
    expr = "{a} " + SYMBOL[op] + " {b}" if symbols and rng.random() < 0.5 else "{a} {op} {b}"
    m = rng.choice(METHOD_OPEN).replace("{e}", expr) + " " + rng.choice(METHOD_FILL) + rng.choice(METHOD_BODY[op])
    return rng.choice(endings).replace("{m}", m)


def gen_arithmetic(rng: random.Random) -> dict:
    op = rng.choices(["add", "sub", "mul"], weights=[0.4, 0.25, 0.35])[0]
    a, b, r = _operands(rng, op)
    bad = "wrong_result" if rng.random() < 0.35 else "no_result"
    w = _wrong_result(rng, op, a, b, r)
    word_problem = rng.random() < 0.2
    fmt = {"op": OPWORD[op], "opname": OPNAME[op]}
    if word_problem:
        q_t, a_ts = rng.choice(WORD_PROBLEMS[op])
        fmt.update(name=rng.choice(NAMES), items=rng.choice(ITEMS))
        a_t = rng.choice(a_ts)
        num = str
    else:
        spelled = max(a, b, r, w) <= 20 and rng.random() < 0.25
        q_t, _ = rng.choice([t for t in Q_TEMPLATES[op] if not (spelled and t[1])])
        a_t, _ = rng.choice([t for t in A_TEMPLATES[op] if not (spelled and t[1])])
        num = num_words if spelled else str
    fa, fb = num(a), num(b)
    question = cap_first(q_t.format(a=fa, b=fb, **fmt))
    style = "plain" if word_problem else rng.choices(["plain", "method", "terse"], weights=[0.55, 0.3, 0.15])[0]
    if style == "method":
        a_t = _method(rng, op, num is str, METHOD_RESULT)
    elif style == "terse":
        a_t = "{a} " + SYMBOL[op] + " {b} = {r}." if num is str else "{a} {op} {b} is {r}."
    chosen = cap_first(a_t.format(a=fa, b=fb, r=num(r), **fmt))
    if bad == "wrong_result":
        rejected = cap_first(a_t.format(a=fa, b=fb, r=num(w), **fmt))
    else:
        pool = [("full", t) for t in NO_RESULT["any"] + NO_RESULT[op]]
        pool += [("trunc", t) for t in NO_RESULT_TRUNC[op]]
        if word_problem:
            # Only mention a name when the question has one.
            pool += [("full", t) for t in NO_RESULT_WORD if "{name}" in q_t or "{name}" not in t]
        _, t = rng.choice(pool)
        if not word_problem and rng.random() < 0.4:
            t = _method(rng, op, num is str, METHOD_NO_RESULT)
        rejected = cap_first(t.format(a=fa, b=fb, **fmt))
    return {
        "question": question,
        "chosen": chosen,
        "rejected": rejected,
        "kind": "arithmetic",
        "sub": f"{op}/{bad}",
        "result": num(r),
        "wrong": num(w) if bad == "wrong_result" else None,
        "gold": number_gold(r),
    }


# --------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------

# country, capital, a well-known city that is NOT the capital (or None)
CAPITALS = [
    ("France", "Paris", "Lyon"),
    ("Germany", "Berlin", "Munich"),
    ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"),
    ("Portugal", "Lisbon", "Porto"),
    ("Japan", "Tokyo", "Osaka"),
    ("China", "Beijing", "Shanghai"),
    ("India", "New Delhi", "Mumbai"),
    ("Canada", "Ottawa", "Toronto"),
    ("Australia", "Canberra", "Sydney"),
    ("Brazil", "Brasília", "Rio de Janeiro"),
    ("Argentina", "Buenos Aires", "Córdoba"),
    ("Mexico", "Mexico City", "Guadalajara"),
    ("Egypt", "Cairo", "Alexandria"),
    ("Kenya", "Nairobi", "Mombasa"),
    ("Nigeria", "Abuja", "Lagos"),
    ("Russia", "Moscow", "Saint Petersburg"),
    ("the United Kingdom", "London", "Manchester"),
    ("Ireland", "Dublin", "Cork"),
    ("Norway", "Oslo", "Bergen"),
    ("Sweden", "Stockholm", "Gothenburg"),
    ("Finland", "Helsinki", "Tampere"),
    ("Denmark", "Copenhagen", "Aarhus"),
    ("Poland", "Warsaw", "Kraków"),
    ("Greece", "Athens", "Thessaloniki"),
    ("Turkey", "Ankara", "Istanbul"),
    ("Austria", "Vienna", "Salzburg"),
    ("Switzerland", "Bern", "Zurich"),
    ("the Netherlands", "Amsterdam", "Rotterdam"),
    ("Belgium", "Brussels", "Antwerp"),
    ("Hungary", "Budapest", None),
    ("the Czech Republic", "Prague", "Brno"),
    ("South Korea", "Seoul", "Busan"),
    ("Thailand", "Bangkok", "Chiang Mai"),
    ("Vietnam", "Hanoi", "Ho Chi Minh City"),
    ("Peru", "Lima", "Cusco"),
    ("Chile", "Santiago", "Valparaíso"),
    ("Colombia", "Bogotá", "Medellín"),
    ("Cuba", "Havana", None),
    ("Morocco", "Rabat", "Casablanca"),
    ("Ghana", "Accra", "Kumasi"),
    ("Ethiopia", "Addis Ababa", None),
    ("New Zealand", "Wellington", "Auckland"),
    ("Iceland", "Reykjavík", None),
    ("the Philippines", "Manila", "Cebu"),
    ("Pakistan", "Islamabad", "Karachi"),
    ("Saudi Arabia", "Riyadh", "Jeddah"),
    ("Ukraine", "Kyiv", "Kharkiv"),
    ("Romania", "Bucharest", "Cluj-Napoca"),
    ("Croatia", "Zagreb", "Split"),
]
CAPITAL_Q = [
    "What is the capital of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital city of {c}.",
    "What is the capital city of {c}?",
    "Tell me the capital of {c}.",
]
CAPITAL_A = [
    "The capital of {c} is {x}.",
    "{x} is the capital city of {c}.",
    "The capital city of {c} is {x}.",
    "The capital of {c} is the city of {x}.",
    "{x} is the capital of {c}, and the government is based there.",
]

# question core, answer sentence with {n}, true value, wrong values
COUNTS = [
    ("days are in a week", "There are {n} days in a week.", 7, [5, 6, 8, 10]),
    ("months are in a year", "A year has {n} months.", 12, [10, 11, 13]),
    ("hours are in a day", "A day has {n} hours.", 24, [12, 20, 48]),
    ("minutes are in an hour", "An hour has {n} minutes.", 60, [30, 50, 100]),
    ("seconds are in a minute", "A minute has {n} seconds.", 60, [30, 100]),
    ("legs does a spider have", "A spider has {n} legs.", 8, [4, 6, 10]),
    ("legs does an insect have", "An insect has {n} legs.", 6, [4, 8]),
    ("legs does a dog have", "A dog has {n} legs.", 4, [2, 3, 6]),
    ("sides does a triangle have", "A triangle has {n} sides.", 3, [4, 5]),
    ("sides does a square have", "A square has {n} sides.", 4, [3, 5, 6]),
    ("sides does a pentagon have", "A pentagon has {n} sides.", 5, [4, 6]),
    ("sides does a hexagon have", "A hexagon has {n} sides.", 6, [5, 8]),
    ("sides does an octagon have", "An octagon has {n} sides.", 8, [6, 10]),
    ("wheels does a bicycle have", "A bicycle has {n} wheels.", 2, [3, 4]),
    ("wheels does a tricycle have", "A tricycle has {n} wheels.", 3, [2, 4]),
    ("days are in a leap year", "A leap year has {n} days.", 366, [364, 365]),
    ("days are in a common year", "A common year has {n} days.", 365, [360, 366]),
    (
        "players does a soccer team have on the field",
        "A soccer team has {n} players on the field.",
        11,
        [9, 10, 12],
    ),
    ("cents are in a dollar", "A dollar has {n} cents.", 100, [10, 50, 1000]),
    ("centimetres are in a metre", "A metre has {n} centimetres.", 100, [10, 1000]),
    ("grams are in a kilogram", "A kilogram has {n} grams.", 1000, [10, 100]),
    ("metres are in a kilometre", "A kilometre has {n} metres.", 1000, [100, 10]),
    ("days are in September", "September has {n} days.", 30, [28, 31]),
    ("days are in January", "January has {n} days.", 31, [28, 30]),
    ("eggs are in a dozen", "There are {n} eggs in a dozen.", 12, [6, 10, 20]),
    ("years are in a century", "A century has {n} years.", 100, [10, 50, 1000]),
    ("years are in a decade", "A decade has {n} years.", 10, [5, 12, 100]),
    ("arms does an octopus have", "An octopus has {n} arms.", 8, [6, 10]),
    ("continents are there", "There are {n} continents.", 7, [5, 6, 9]),
    (
        "planets are in our solar system",
        "There are {n} planets in our solar system.",
        8,
        [7, 9, 10],
    ),
    (
        "strings does a standard guitar have",
        "A standard guitar has {n} strings.",
        6,
        [4, 5, 8],
    ),
    (
        "colours are in a rainbow",
        "A rainbow is usually said to have {n} colours.",
        7,
        [5, 6, 8],
    ),
    ("weeks are in a year", "A year has about {n} weeks.", 52, [12, 48, 50]),
    ("faces does a cube have", "A cube has {n} faces.", 6, [4, 8, 12]),
    (
        "letters are in the English alphabet",
        "The English alphabet has {n} letters.",
        26,
        [24, 25, 28],
    ),
    ("days are in a fortnight", "A fortnight has {n} days.", 14, [7, 10, 15]),
    ("sides does a rectangle have", "A rectangle has {n} sides.", 4, [3, 5, 6]),
]
COUNT_Q = [
    "How many {core}?",
    "Quick question: how many {core}?",
    "Can you tell me: how many {core}?",
    "I forgot. How many {core}?",
]
COUNT_A = [
    "{s}",
    "The answer is {n}. {s}",
    "{s_open}, so the answer is {n}.",
    "Good question! {s}",
]

# thing (lower case), colour, wrong colours
COLOURS = [
    ("the sky on a clear day", "blue", ["green", "red"]),
    ("grass", "green", ["blue", "purple"]),
    ("fresh snow", "white", ["black", "green"]),
    ("a ripe banana", "yellow", ["blue", "purple"]),
    ("coal", "black", ["white", "yellow"]),
    ("a ripe tomato", "red", ["blue", "white"]),
    ("a carrot", "orange", ["blue", "purple"]),
    ("a lemon", "yellow", ["blue", "black"]),
    ("milk", "white", ["green", "red"]),
    ("a ripe strawberry", "red", ["blue", "grey"]),
    ("an emerald", "green", ["red", "yellow"]),
    ("a polar bear's fur", "white", ["black", "green"]),
    ("a crow", "black", ["white", "pink"]),
    ("milk chocolate", "brown", ["green", "blue"]),
    ("a pumpkin", "orange", ["blue", "purple"]),
    ("a lime", "green", ["red", "purple"]),
    ("a flamingo", "pink", ["green", "blue"]),
    ("an eggplant", "purple", ["yellow", "orange"]),
    ("a cucumber", "green", ["red", "blue"]),
    ("a tree trunk", "brown", ["blue", "pink"]),
    ("a school bus in the United States", "yellow", ["purple", "green"]),
    ("blood", "red", ["green", "blue"]),
    ("a swan", "white", ["green", "red"]),
    ("a ruby", "red", ["green", "blue"]),
    ("a sapphire", "blue", ["yellow", "brown"]),
    ("the inside of a kiwi fruit", "green", ["blue", "red"]),
]
COLOUR_Q = [
    "What colour is {t}?",
    "What color is {t}?",
    "Which colour is {t} usually?",
    "Tell me the color of {t}.",
]
COLOUR_A = [
    "{T} is {x}.",
    "{T} is usually {x}.",
    "The usual {colour} of {t} is {x}.",
    "{T} is {x} in {colour}.",
    "Most of the time, {t} is {x}.",
]

# word, opposite, a wrong answer (often a near-synonym)
OPPOSITES = [
    ("hot", "cold", "warm"),
    ("big", "small", "large"),
    ("up", "down", "high"),
    ("fast", "slow", "quick"),
    ("happy", "sad", "glad"),
    ("light", "dark", "bright"),
    ("open", "closed", "wide"),
    ("early", "late", "soon"),
    ("full", "empty", "packed"),
    ("strong", "weak", "powerful"),
    ("young", "old", "little"),
    ("wet", "dry", "damp"),
    ("loud", "quiet", "noisy"),
    ("hard", "soft", "firm"),
    ("rich", "poor", "wealthy"),
    ("high", "low", "tall"),
    ("first", "last", "best"),
    ("push", "pull", "press"),
    ("begin", "end", "start"),
    ("inside", "outside", "within"),
    ("true", "false", "correct"),
    ("thick", "thin", "heavy"),
    ("clean", "dirty", "tidy"),
    ("buy", "sell", "purchase"),
    ("day", "night", "morning"),
    ("north", "south", "west"),
    ("east", "west", "north"),
    ("always", "never", "often"),
    ("before", "after", "earlier"),
    ("above", "below", "over"),
    ("arrive", "leave", "reach"),
    ("remember", "forget", "recall"),
    ("ancient", "modern", "old"),
    ("question", "answer", "query"),
    ("friend", "enemy", "pal"),
    ("laugh", "cry", "giggle"),
    ("love", "hate", "like"),
    ("sharp", "dull", "pointed"),
    ("smooth", "rough", "flat"),
    ("cheap", "expensive", "inexpensive"),
    ("near", "far", "close"),
    ("polite", "rude", "kind"),
    ("brave", "cowardly", "bold"),
    ("narrow", "wide", "thin"),
    ("deep", "shallow", "low"),
]
OPPOSITE_Q = [
    'What is the opposite of "{w}"?',
    "What is the opposite of {w}?",
    "Give me the opposite of the word {w}.",
    "Which word means the opposite of {w}?",
    'Name an antonym of "{w}".',
]
OPPOSITE_A = [
    'The opposite of "{w}" is "{x}".',
    "The opposite of {w} is {x}.",
    "An antonym of {w} is {x}.",
    "The word {x} means the opposite of {w}.",
    'A good opposite for the word "{w}" is "{x}".',
]

# singular, plural, a wrong plural
PLURALS = [
    ("child", "children", "childs"),
    ("mouse", "mice", "mouses"),
    ("foot", "feet", "foots"),
    ("tooth", "teeth", "tooths"),
    ("man", "men", "mans"),
    ("woman", "women", "womans"),
    ("goose", "geese", "gooses"),
    ("ox", "oxen", "oxes"),
    ("sheep", "sheep", "sheeps"),
    ("deer", "deer", "deers"),
    ("leaf", "leaves", "leafs"),
    ("knife", "knives", "knifes"),
    ("wolf", "wolves", "wolfs"),
    ("box", "boxes", "boxs"),
    ("city", "cities", "citys"),
    ("baby", "babies", "babys"),
    ("potato", "potatoes", "potatos"),
    ("tomato", "tomatoes", "tomatos"),
    ("party", "parties", "partys"),
    ("wife", "wives", "wifes"),
    ("half", "halves", "halfs"),
    ("church", "churches", "churchs"),
    ("dish", "dishes", "dishs"),
    ("story", "stories", "storys"),
    ("loaf", "loaves", "loafs"),
    ("life", "lives", "lifes"),
    ("shelf", "shelves", "shelfs"),
    ("louse", "lice", "louses"),
    ("fox", "foxes", "foxs"),
    ("watch", "watches", "watchs"),
    ("lady", "ladies", "ladys"),
    ("calf", "calves", "calfs"),
    ("thief", "thieves", "thiefs"),
    ("berry", "berries", "berrys"),
    ("toy", "toys", "toies"),
    ("key", "keys", "keies"),
    ("brush", "brushes", "brushs"),
    ("cherry", "cherries", "cherrys"),
]
PLURAL_Q = [
    'What is the plural of "{w}"?',
    "What is the plural of {w}?",
    "How do you write more than one {w}?",
    "What is the plural form of the word {w}?",
    "If there is more than one {w}, what word do you use?",
]
PLURAL_A = [
    'The plural of "{w}" is "{x}".',
    "The plural of {w} is {x}.",
    "When there is more than one {w}, you say {x}.",
    'The plural form of {w} is {x}, as in "two {x}".',
    "More than one {w} is written as {x}.",
]

# verb, simple past, a wrong past form
PAST = [
    ("go", "went", "goed"),
    ("eat", "ate", "eated"),
    ("run", "ran", "runned"),
    ("see", "saw", "seed"),
    ("write", "wrote", "writed"),
    ("take", "took", "taked"),
    ("buy", "bought", "buyed"),
    ("think", "thought", "thinked"),
    ("swim", "swam", "swimmed"),
    ("sing", "sang", "singed"),
    ("drink", "drank", "drinked"),
    ("fly", "flew", "flied"),
    ("drive", "drove", "drived"),
    ("speak", "spoke", "speaked"),
    ("break", "broke", "breaked"),
    ("choose", "chose", "choosed"),
    ("forget", "forgot", "forgetted"),
    ("bring", "brought", "bringed"),
    ("teach", "taught", "teached"),
    ("catch", "caught", "catched"),
    ("begin", "began", "beginned"),
    ("give", "gave", "gived"),
    ("know", "knew", "knowed"),
    ("grow", "grew", "growed"),
    ("draw", "drew", "drawed"),
    ("throw", "threw", "throwed"),
    ("sleep", "slept", "sleeped"),
    ("keep", "kept", "keeped"),
    ("feel", "felt", "feeled"),
    ("find", "found", "finded"),
    ("tell", "told", "telled"),
    ("sell", "sold", "selled"),
    ("stand", "stood", "standed"),
    ("understand", "understood", "understanded"),
    ("win", "won", "winned"),
    ("sit", "sat", "sitted"),
    ("meet", "met", "meeted"),
    ("lose", "lost", "losed"),
    ("hold", "held", "holded"),
    ("ride", "rode", "rided"),
]
PAST_Q = [
    'What is the past tense of "{w}"?',
    "What is the past tense of {w}?",
    "How do you say {w} in the past tense?",
    "Give me the past tense of the verb {w}.",
]
PAST_A = [
    'The past tense of "{w}" is "{x}".',
    "The past tense of the verb {w} is {x}.",
    "In the past tense, {w} becomes {x}.",
    'The simple past form of the verb "{w}" is "{x}".',
]

# animal, verb (3rd person), noun for the sound
SOUNDS = [
    ("dog", "barks", "bark"),
    ("cat", "meows", "meow"),
    ("cow", "moos", "moo"),
    ("duck", "quacks", "quack"),
    ("pig", "oinks", "oink"),
    ("horse", "neighs", "neigh"),
    ("lion", "roars", "roar"),
    ("owl", "hoots", "hoot"),
    ("snake", "hisses", "hiss"),
    ("bee", "buzzes", "buzz"),
    ("frog", "croaks", "croak"),
    ("mouse", "squeaks", "squeak"),
    ("donkey", "brays", "bray"),
    ("wolf", "howls", "howl"),
    ("hen", "clucks", "cluck"),
    ("crow", "caws", "caw"),
    ("goose", "honks", "honk"),
    ("turkey", "gobbles", "gobble"),
    ("sheep", "bleats", "bleat"),
    ("elephant", "trumpets", "trumpet"),
]
SOUND_Q = [
    "What sound does {aa} make?",
    "What noise does {aa} make?",
    "Which sound is made by {aa}?",
    "What does {aa} sound like?",
]
SOUND_A = [
    "{Aa} {v}, so its sound is called {an} {x}.",
    "The sound {aa} makes is called {an} {x}.",
    "{Aa} makes {an} {x} sound.",
    "When {aa} makes a noise, it {v}.",
]


FACT_TABLES = {
    "capital": len(CAPITALS) * len(CAPITAL_Q),
    "count": len(COUNTS) * len(COUNT_Q),
    "colour": len(COLOURS) * len(COLOUR_Q),
    "opposite": len(OPPOSITES) * len(OPPOSITE_Q),
    "plural": len(PLURALS) * len(PLURAL_Q),
    "past": len(PAST) * len(PAST_Q),
    "sound": len(SOUNDS) * len(SOUND_Q),
}


def _pick_wrong_template(rng: random.Random, templates: list[str], t: str) -> str:
    """Same template as chosen most of the time, sometimes a different one."""
    return t if rng.random() < 0.7 else rng.choice(templates)


def gen_facts(rng: random.Random) -> dict:
    # Tables are picked in proportion to how many distinct questions they give.
    table = rng.choices(list(FACT_TABLES), weights=list(FACT_TABLES.values()))[0]
    if table == "capital":
        c, cap, city = rng.choice(CAPITALS)
        if city and rng.random() < 0.5:
            wrong = city
        else:
            wrong = rng.choice([x[1] for x in CAPITALS if x[1] != cap])
        q = rng.choice(CAPITAL_Q).format(c=c)
        t = rng.choice(CAPITAL_A)
        tw = _pick_wrong_template(rng, CAPITAL_A, t)
        chosen, rejected = t.format(c=c, x=cap), tw.format(c=c, x=wrong)
        gold = [cap]
    elif table == "count":
        core, sent, n, wrongs = rng.choice(COUNTS)
        q = rng.choice(COUNT_Q).format(core=core)
        t = rng.choice(COUNT_A)
        tw = _pick_wrong_template(rng, COUNT_A, t)
        w = rng.choice(wrongs)

        def fill(tpl: str, k: int) -> str:
            s = sent.format(n=k)
            return tpl.format(s=s, s_open=s[:-1], n=k)

        chosen, rejected = fill(t, n), fill(tw, w)
        gold = number_gold(n)
    elif table == "colour":
        thing, col, wrongs = rng.choice(COLOURS)
        qt = rng.choice(COLOUR_Q)
        q = qt.format(t=thing)
        spelling = "color" if "color" in qt else "colour"
        t = rng.choice(COLOUR_A)
        tw = _pick_wrong_template(rng, COLOUR_A, t)
        kw = {"t": thing, "T": cap_first(thing), "colour": spelling}
        chosen = t.format(x=col, **kw)
        rejected = tw.format(x=rng.choice(wrongs), **kw)
        gold = [col]
    elif table in ("opposite", "plural", "past"):
        data, qs, ans = {
            "opposite": (OPPOSITES, OPPOSITE_Q, OPPOSITE_A),
            "plural": (PLURALS, PLURAL_Q, PLURAL_A),
            "past": (PAST, PAST_Q, PAST_A),
        }[table]
        w, right, wrong = rng.choice(data)
        if table == "opposite" and rng.random() < 0.3:
            others = [x[1] for x in data if x[1] not in (right, w)]
            wrong = rng.choice(others)
        q = rng.choice(qs).format(w=w)
        t = rng.choice(ans)
        tw = _pick_wrong_template(rng, ans, t)
        chosen, rejected = t.format(w=w, x=right), tw.format(w=w, x=wrong)
        gold = [right]
    else:
        animal, verb, noun = rng.choice(SOUNDS)
        _, wverb, wnoun = rng.choice([s for s in SOUNDS if s[0] != animal])
        aa = f"{article(animal)} {animal}"
        q = rng.choice(SOUND_Q).format(aa=aa)
        t = rng.choice(SOUND_A)
        tw = _pick_wrong_template(rng, SOUND_A, t)

        def fill(tpl: str, v: str, x: str) -> str:
            return tpl.format(aa=aa, Aa=cap_first(aa), v=v, x=x, an=article(x))

        chosen, rejected = fill(t, verb, noun), fill(tw, wverb, wnoun)
        gold = [noun, verb]
    if any(mentions(q, g) for g in gold):
        gold = None  # e.g. "sheep" -> "sheep": repeating the question would count as correct
    return {
        "question": cap_first(q),
        "chosen": cap_first(chosen),
        "rejected": cap_first(rejected),
        "kind": "facts",
        "sub": f"{table}/wrong",
        "gold": gold,
    }


# --------------------------------------------------------------------------
# Helpfulness and format: question/answer items
# --------------------------------------------------------------------------

# (question phrasings, a direct and complete answer)
GENERAL_QA = [
    (
        ["How do I boil an egg?", "What is the simplest way to boil an egg?"],
        "Put the egg in boiling water for about nine minutes for a hard-boiled "
        "egg, then cool it in cold water before peeling it.",
    ),
    (
        ["How can I save water at home?", "What are easy ways to use less water?"],
        "Take shorter showers, fix leaking taps, and only run the washing machine or dishwasher when it is full.",
    ),
    (
        ["Why do we need sleep?", "Why is sleep important?"],
        "Sleep lets the body repair itself and helps the brain store memories, "
        "so without it we feel tired and think less clearly.",
    ),
    (
        ["What is photosynthesis?", "Can you explain photosynthesis simply?"],
        "Photosynthesis is the process plants use to turn sunlight, water and carbon dioxide into sugar and oxygen.",
    ),
    (
        ["How do I make a cup of tea?", "What are the steps to make tea?"],
        "Pour boiling water over a tea bag in a cup, let it steep for three to "
        "five minutes, then remove the bag and add milk if you like.",
    ),
    (
        ["Why is the sky blue?", "What makes the sky look blue?"],
        "Air scatters blue sunlight much more than red light, so blue light "
        "reaches our eyes from every part of the sky.",
    ),
    (
        ["How can I fall asleep faster?", "Any tips for falling asleep quickly?"],
        "Keep a regular bedtime, avoid screens and caffeine in the evening, and keep your bedroom dark and cool.",
    ),
    (
        ["What is a noun?", "Can you tell me what a noun is?"],
        "A noun is a word that names a person, place, thing or idea, such as teacher, city or happiness.",
    ),
    (
        ["What is a verb?", "Explain what a verb is."],
        "A verb is a word that describes an action or a state, such as run, think or be.",
    ),
    (
        ["How do I wash my hands properly?", "What is the right way to wash hands?"],
        "Wet your hands, rub them with soap for at least twenty seconds, rinse "
        "them under running water and dry them with a clean towel.",
    ),
    (
        [
            "Why do leaves change colour in autumn?",
            "Why do leaves turn yellow and red in the fall?",
        ],
        "In autumn trees stop making green chlorophyll, so the yellow and red pigments in the leaves become visible.",
    ),
    (
        ["How do I keep a houseplant alive?", "What does a houseplant need?"],
        "Give it enough light, water it only when the top of the soil is dry, "
        "and use a pot that lets extra water drain away.",
    ),
    (
        ["What is the water cycle?", "Explain the water cycle briefly."],
        "The water cycle is the way water evaporates from seas and lakes, forms "
        "clouds, falls as rain or snow, and flows back again.",
    ),
    (
        ["How can I remember things better?", "What helps me remember what I study?"],
        "Review the material several times over a few days, test yourself "
        "instead of just rereading, and get enough sleep.",
    ),
    (
        ["What is gravity?", "Can you explain gravity in simple words?"],
        "Gravity is the force that pulls objects toward each other, which is "
        "why things fall to the ground and planets circle the sun.",
    ),
    (
        [
            "How do I write a good email subject line?",
            "What makes a good subject line for an email?",
        ],
        "Keep it short and specific, and say exactly what the email is about, "
        "such as the meeting time or the decision you need.",
    ),
    (
        ["How do I stop hiccups?", "What can I do to get rid of hiccups?"],
        "Try holding your breath for a few seconds or slowly sipping cold water; "
        "hiccups usually stop on their own soon.",
    ),
    (
        ["Why do we have seasons?", "What causes the seasons on Earth?"],
        "The Earth's axis is tilted, so each half of the planet gets more direct "
        "sunlight at different times of the year.",
    ),
    (
        ["How often should I brush my teeth?", "How many times a day should I brush?"],
        "Brush your teeth twice a day, in the morning and before bed, for about two minutes each time.",
    ),
    (
        ["What is a mammal?", "What makes an animal a mammal?"],
        "A mammal is a warm-blooded animal with hair or fur that feeds its young "
        "with milk, such as a dog, a whale or a human.",
    ),
    (
        ["How do I calm down when I feel stressed?", "How can I feel less stressed?"],
        "Take a few slow, deep breaths, step away for a short walk, and focus on one small task at a time.",
    ),
    (
        [
            "What is the difference between weather and climate?",
            "How is weather different from climate?",
        ],
        "Weather is what the air is like on a given day, while climate is the "
        "typical weather of a place over many years.",
    ),
    (
        ["How do I make my password stronger?", "What makes a strong password?"],
        "Use at least twelve characters, mix words, numbers and symbols, and "
        "never reuse the same password on other sites.",
    ),
    (
        ["Why do cats purr?", "What does it mean when a cat purrs?"],
        "Cats usually purr when they are relaxed and content, but some also purr "
        "to calm themselves when they are hurt or scared.",
    ),
    (
        ["How do I start learning to cook?", "What is a good way to begin cooking?"],
        "Start with a few simple recipes like pasta or scrambled eggs, follow "
        "them closely, and repeat them until you feel confident.",
    ),
    (
        ["What is an adjective?", "Explain what an adjective is."],
        "An adjective is a word that describes a noun, such as red, tall or friendly.",
    ),
    (
        ["How do I clean a computer screen?", "How should I clean a laptop screen?"],
        "Turn the screen off and wipe it gently with a soft, slightly damp cloth, "
        "without spraying liquid directly on it.",
    ),
    (
        ["Why does ice float on water?", "How come ice floats?"],
        "Water expands when it freezes, so ice is less dense than the liquid water around it and floats on top.",
    ),
    (
        ["How do I write a thank-you note?", "What should a thank-you note say?"],
        "Thank the person for something specific, say how it helped or made you "
        "feel, and end with a warm closing line.",
    ),
    (
        ["What is a volcano?", "Can you explain what a volcano is?"],
        "A volcano is an opening in the Earth's crust where hot melted rock, ash "
        "and gas escape from deep below the surface.",
    ),
    (
        ["How do plants drink water?", "How does water get into a plant?"],
        "Plants take in water through their roots, and it travels up through thin tubes in the stem to the leaves.",
    ),
    (
        ["How do I focus better when studying?", "How can I concentrate on studying?"],
        "Put your phone in another room, work in blocks of about twenty-five "
        "minutes, and take a short break after each block.",
    ),
    (
        ["What is the moon made of?", "What is the surface of the moon like?"],
        "The moon is made mostly of rock, and its surface is covered in grey dust and craters.",
    ),
    (
        [
            "How do I introduce myself at a new job?",
            "What should I say when I meet new coworkers?",
        ],
        "Smile, say your name and your role, and ask a friendly question about what they work on.",
    ),
    (
        ["Why do we sweat?", "What is the purpose of sweating?"],
        "We sweat to cool down, because sweat carries heat away from the skin as it evaporates.",
    ),
    (
        [
            "How do I cut an onion without crying?",
            "How can I stop my eyes watering when I chop onions?",
        ],
        "Chill the onion before cutting it and use a very sharp knife, which "
        "releases less of the gas that stings your eyes.",
    ),
    (
        ["What is a fraction?", "Explain what a fraction is."],
        "A fraction is a way to write part of a whole, such as one half or three quarters.",
    ),
    (
        [
            "How long should I rest between workouts?",
            "How many rest days do I need between workouts?",
        ],
        "Give the same muscles about one or two days of rest, so alternating hard days with easy days works well.",
    ),
    (
        ["What does a thermometer measure?", "What is a thermometer used for?"],
        "A thermometer measures temperature, which tells you how hot or cold something is.",
    ),
    (
        ["How do I keep bread fresh?", "What is the best way to store bread?"],
        "Keep bread in a bread box or paper bag at room temperature, and freeze "
        "any slices you will not eat within a few days.",
    ),
    (
        ["Why do birds migrate?", "Why do some birds fly south for the winter?"],
        "Many birds migrate to find food and warmer weather, then return in spring to nest where food is plentiful.",
    ),
    (
        ["How can I be a better listener?", "What makes someone a good listener?"],
        "Give the speaker your full attention, let them finish without "
        "interrupting, and ask questions to show you understood.",
    ),
    (
        ["What is electricity?", "Can you explain electricity simply?"],
        "Electricity is the flow of tiny charged particles called electrons, "
        "which we use to power lights, machines and devices.",
    ),
    (
        [
            "How do I prepare for a job interview?",
            "What should I do before a job interview?",
        ],
        "Research the company, practise answers to common questions, and prepare a few questions of your own to ask.",
    ),
    (
        ["What is a habitat?", "What does habitat mean in science?"],
        "A habitat is the natural home of an animal or plant, where it finds food, water and shelter.",
    ),
    (
        ["How do I fix a flat bicycle tyre?", "How do I fix a flat tire on my bike?"],
        "Remove the wheel, take out the inner tube, patch or replace it, then "
        "refit it and pump it up to the right pressure.",
    ),
    (
        ["Why is exercise good for you?", "What are the benefits of exercise?"],
        "Regular exercise strengthens your heart and muscles, improves your mood, and helps you sleep better.",
    ),
    (
        ["What is a rainbow?", "How does a rainbow form?"],
        "A rainbow forms when sunlight passes through raindrops and is split into its different colours.",
    ),
    (
        [
            "How do I make friends in a new city?",
            "How can I meet people after moving?",
        ],
        "Join a club, class or sports team that matches your interests, and say "
        "yes to invitations even when you feel shy.",
    ),
    (
        ["What is recycling?", "Why should we recycle?"],
        "Recycling turns used paper, glass and plastic into new products, which saves resources and reduces waste.",
    ),
    (
        ["How do I write a shopping list?", "What's a good way to plan my shopping?"],
        "Check what you already have, write down what you need for the week's meals, and group the items by aisle.",
    ),
    (
        ["What is an atom?", "Explain what an atom is."],
        "An atom is the smallest unit of a chemical element, made of a nucleus "
        "of protons and neutrons surrounded by electrons.",
    ),
    (
        ["Why do we need to drink water?", "Why is drinking water important?"],
        "Your body needs water to control its temperature, carry nutrients and "
        "remove waste, so drinking enough keeps you healthy.",
    ),
    (
        ["How do I tie a shoelace?", "What are the steps to tie shoelaces?"],
        "Cross the laces and tuck one under to make a knot, form a loop with one "
        "lace, wrap the other around it, and pull it through.",
    ),
    (
        ["What is a paragraph?", "Explain what a paragraph is."],
        "A paragraph is a group of sentences about one main idea, usually starting on a new line.",
    ),
    (
        ["How can I reduce food waste?", "What are ways to waste less food?"],
        "Plan your meals, store leftovers in the fridge and eat them soon, and freeze food before it goes bad.",
    ),
    (
        ["Why does the moon change shape?", "Why does the moon have phases?"],
        "As the moon circles the Earth, we see different amounts of its sunlit side, so it seems to change shape.",
    ),
    (
        ["How do I apologise to a friend?", "How should I say sorry to a friend?"],
        "Say clearly what you did wrong, apologise without making excuses, and ask how you can make it right.",
    ),
    (
        ["What is a desert?", "What makes a place a desert?"],
        "A desert is a place that gets very little rain during the year, so only a few hardy plants can grow there.",
    ),
    (
        ["How do I save money each month?", "What is an easy way to start saving?"],
        "Set aside a fixed amount as soon as you are paid, track what you spend, "
        "and cut back on small purchases you do not need.",
    ),
    (
        ["What is a compass used for?", "How does a compass help you?"],
        "A compass shows which way is north, so you can work out directions and avoid getting lost.",
    ),
    (
        ["How do I make a paper airplane?", "How do you fold a simple paper plane?"],
        "Fold a sheet of paper in half lengthwise, fold the top corners to the "
        "centre line, fold down the sides as wings, and throw it gently.",
    ),
    (
        ["Why do we get thirsty?", "What makes us feel thirsty?"],
        "We feel thirsty when the body is low on water, which is the brain's signal that it is time to drink.",
    ),
    (
        ["What is a poem?", "Explain what a poem is."],
        "A poem is a piece of writing that uses rhythm, sound and carefully chosen words to express feelings or ideas.",
    ),
    (
        ["How do I take care of a pet fish?", "What does a pet goldfish need?"],
        "Keep the tank clean and filtered, feed the fish a small pinch of food "
        "once a day, and change some of the water every week.",
    ),
    (
        [
            "How can I get better at public speaking?",
            "How do I get more confident speaking in front of people?",
        ],
        "Practise your talk out loud several times, start with small audiences, "
        "and focus on speaking slowly and clearly.",
    ),
    (
        ["What is an ecosystem?", "Explain what an ecosystem is."],
        "An ecosystem is a community of plants and animals together with the land, water and air they depend on.",
    ),
    (
        [
            "How do I keep my phone battery healthy?",
            "How can I make my phone battery last longer?",
        ],
        "Avoid letting the battery run down to zero or sit somewhere hot, and "
        "lower the screen brightness when you can.",
    ),
    (
        ["What is a synonym?", "Explain what a synonym is."],
        "A synonym is a word that means the same or nearly the same as another word, like big and large.",
    ),
    (
        ["How do I read a map?", "What is the first step in reading a map?"],
        "Start with the map's key and compass, find where you are, and use the scale bar to judge distances.",
    ),
    (
        ["What is a budget?", "Why should I make a budget?"],
        "A budget is a plan for how you will spend and save your money, which "
        "helps you avoid running out before the month ends.",
    ),
    (
        ["How should I store fresh herbs?", "How do I keep fresh herbs from wilting?"],
        "Stand soft herbs like basil in a glass of water, and wrap firm herbs "
        "like rosemary in a damp paper towel in the fridge.",
    ),
]

# word, short definition
DEFINITIONS = [
    ("generous", "willing to give money, time or help to others"),
    ("ancient", "very old, from a long time ago"),
    ("curious", "eager to know or learn about something"),
    ("fragile", "easily broken or damaged"),
    ("enormous", "extremely large in size or amount"),
    ("brave", "ready to face danger or pain without showing fear"),
    ("humid", "warm and damp, with a lot of moisture in the air"),
    ("rapid", "happening very quickly or in a short time"),
    ("fatigue", "a feeling of extreme tiredness"),
    ("vacant", "empty and not being used by anyone"),
    ("reluctant", "unwilling and slow to do something"),
    ("optimistic", "hopeful and confident about the future"),
    ("cautious", "careful to avoid danger or mistakes"),
    ("genuine", "real, and truly what it seems to be"),
    ("abundant", "existing in large amounts"),
    ("hibernate", "to spend the winter in a long, deep sleep"),
    ("migrate", "to move from one place to another, often with the seasons"),
    ("fluent", "able to speak or write a language easily and well"),
    ("ponder", "to think carefully about something for a while"),
    ("scarce", "hard to find because there is not much of it"),
    ("vivid", "very bright, clear or full of detail"),
    ("puzzled", "confused because you do not understand something"),
    ("punctual", "arriving or doing something at the agreed time"),
    ("tranquil", "calm, quiet and peaceful"),
    ("nocturnal", "active at night rather than during the day"),
    ("transparent", "clear enough to see through"),
    ("obsolete", "no longer used because something newer has replaced it"),
    ("diligent", "working hard and carefully"),
    ("elated", "extremely happy and excited"),
    ("frugal", "careful not to spend more money than necessary"),
    ("hesitate", "to pause before doing or saying something because you are unsure"),
    ("inevitable", "certain to happen and impossible to avoid"),
    ("meticulous", "very careful and paying close attention to detail"),
    ("novice", "a person who is new to an activity and has little experience"),
    ("peculiar", "strange or unusual in a noticeable way"),
    ("resilient", "able to recover quickly from difficulties"),
    ("sturdy", "strong and not easily broken"),
    ("timid", "shy and easily frightened"),
    ("vast", "extremely large in area or amount"),
    ("weary", "very tired, especially after hard work"),
    ("anxious", "worried and nervous about something that might happen"),
    ("ample", "more than enough for what is needed"),
    ("commute", "to travel regularly between home and work or school"),
    ("durable", "able to last a long time without wearing out"),
    ("feeble", "very weak, without much strength"),
]
DEF_Q = [
    'What does "{w}" mean?',
    "What does the word {w} mean?",
    'Define the word "{w}".',
    "What is the meaning of {w}?",
]
DEF_A = [
    'The word "{w}" means {d}.',
    '"{W}" is a word that means {d}.',
    'If you look up "{w}" in a dictionary, it means {d}.',
]

# English phrase -> (Spanish, French, German, Italian)
LANGS = ("Spanish", "French", "German", "Italian")
TRANSLATIONS = [
    ("hello", ("hola", "bonjour", "hallo", "ciao")),
    ("thank you", ("gracias", "merci", "danke", "grazie")),
    ("goodbye", ("adiós", "au revoir", "auf Wiedersehen", "arrivederci")),
    ("please", ("por favor", "s'il vous plaît", "bitte", "per favore")),
    ("yes", ("sí", "oui", "ja", "sì")),
    ("good night", ("buenas noches", "bonne nuit", "gute Nacht", "buona notte")),
    ("water", ("agua", "eau", "Wasser", "acqua")),
    ("friend", ("amigo", "ami", "Freund", "amico")),
    ("cat", ("gato", "chat", "Katze", "gatto")),
    ("dog", ("perro", "chien", "Hund", "cane")),
    ("book", ("libro", "livre", "Buch", "libro")),
    ("house", ("casa", "maison", "Haus", "casa")),
    ("bread", ("pan", "pain", "Brot", "pane")),
    ("apple", ("manzana", "pomme", "Apfel", "mela")),
]
TR_Q = [
    'How do you say "{e}" in {L}?',
    'What is the {L} for "{e}"?',
    'Translate "{e}" into {L}.',
]
TR_A = [
    'In {L}, the way to say "{e}" is "{t}".',
    'The {L} for "{e}" is "{t}".',
    'To say "{e}" in {L}, you say "{t}".',
    'You say "{t}", which is how {L} speakers say "{e}".',
]

PROPER_STARTS = set(LANGS) | {"Earth", "English"}


def build_items() -> list[tuple[str, list[str], list[str]]]:
    """All (group id, question phrasings, answer variants) for open questions."""
    items = []
    for i, (qs, ans) in enumerate(GENERAL_QA):
        items.append((f"general{i}", qs, [ans]))
    for w, d in DEFINITIONS:
        qs = [q.format(w=w) for q in DEF_Q]
        ans = [a.format(w=w, W=cap_first(w), d=d) for a in DEF_A]
        items.append((f"def:{w}", qs, ans))
    for e, ts in TRANSLATIONS:
        for lang, t in zip(LANGS, ts, strict=True):
            qs = [q.format(e=e, L=lang) for q in TR_Q]
            ans = [a.format(e=e, L=lang, t=t) for a in TR_A]
            items.append((f"tr:{e}:{lang}", qs, ans))
    return items


EVASIVE = [
    "I'm not sure I can help with that.",
    "That's a tricky one, and I'd rather not guess.",
    "I don't really know much about that topic.",
    "You might want to ask someone else about that.",
    "It's hard to say, because it depends on many things.",
    "I can't answer that right now.",
    "Hmm, that's an interesting question, but I'm not sure.",
    "There are many opinions about this, so I'll leave it to you.",
    "I'd suggest looking that up in a book or online.",
    "Maybe, maybe not; it's difficult to say.",
    "I would need more information before I could answer that.",
    "That is outside what I can talk about.",
    "Good question! I'll have to think about it another time.",
    "Everyone has their own answer to that, so there is no single answer.",
]
RUDE = [
    "That's a silly question; figure it out yourself.",
    "Seriously? Look it up like everyone else does.",
    "I'm not going to waste my time on that.",
    "Why would you even ask me that?",
    "Ask someone who cares.",
    "Everyone already knows that, so I won't bother explaining it.",
    "Not my problem, sorry.",
    "You could have searched for that instead of bothering me.",
    "Honestly, that is too basic for me to answer.",
    "Come on, you should know this by now.",
    "Do I look like a dictionary to you?",
    "I have better things to do than answer that.",
]
FILLER_BEFORE = [
    "Well, that is a really interesting question, and people have been asking it for a very long time.",
    "Let me start by saying that there is a lot to think about here, so bear with me for a moment.",
    "Before I answer, I want to say that I really enjoy questions like this one, because they make me think.",
    "So, this is something that comes up quite often, and many people are not sure about it.",
    "Okay, let me think about this carefully, because it deserves a proper answer and I want to get it right.",
]
FILLER_AFTER = [
    "I hope that helps, and please let me know if you have any more questions about this or anything else at all.",
    "Of course, this is just one way of looking at it, and there are many other ways too.",
    "There is so much more that could be said about this, and everyone has their own opinion.",
    "Anyway, as I was saying, it really depends on a lot of different things, so it is hard to be sure.",
    "To be honest, I could talk about this topic all day long if you let me.",
    "Some people might disagree with this, but that is perfectly fine, since everyone is different.",
    "It is worth thinking about this carefully, because it is the kind of "
    "thing that comes up quite often in daily life.",
]
OFF_TOPIC = [
    "I had a lovely sandwich for lunch today, and it reminded me how much I enjoy cooking.",
    "Speaking of which, the weather has been really nice lately, so I might go for a walk.",
    "That reminds me of my neighbour's cat, who loves sitting on the garden fence all afternoon.",
    "Let's talk about something more fun, like which football team will win the league this year.",
    "I have been thinking a lot about what to watch on television tonight.",
    "Did you know that some trains can travel faster than three hundred kilometres an hour?",
    "My favourite season is spring, because everything starts to grow again.",
    "Board games are a great way to spend a rainy evening with friends.",
    "I recently started learning to play the guitar, and it is harder than it looks.",
]
IMPOLITE_PREFIX = [
    "Ugh, fine. ",
    "Obviously, ",
    "I can't believe you need to ask, but ",
    "Listen carefully, because I will only say this once: ",
    "Even a child knows this: ",
    "Fine, if you really can't work it out yourself: ",
]
IMPOLITE_SUFFIX = [
    " Try to remember it next time.",
    " Was that so hard?",
    " Please don't ask me such basic things again.",
    " I thought everyone knew that.",
]
REPEAT_JOIN = [
    "{s} {s}",
    "{s} {s} {s}",
    "{s} As I said, {l}",
    "{s} Again, {l}",
    "{s} In other words, {l}",
    "{s} To repeat: {l}",
]
FORMAT_WRAP = [
    "{q} Please keep it short.",
    "In one or two sentences: {q}",
    "Briefly, {ql}",
    "{q} Answer in one sentence.",
    "Quick answer please: {q}",
    "{q} No need for a long explanation.",
    "{q} Keep your answer brief and on topic.",
]


def truncate(rng: random.Random, text: str) -> str:
    """Cut an answer off mid-sentence (no final punctuation)."""
    toks = text.split()
    assert len(toks) >= 5, text
    for _ in range(100):
        k = rng.randint(max(2, int(len(toks) * 0.35)), int(len(toks) * 0.75))
        cut = " ".join(toks[:k]).rstrip(",;:")
        if not ends_sentence(cut) and not cut.endswith('"'):
            return cut
    raise AssertionError(f"could not truncate {text!r}")


def translation_gold(gid: str) -> list[str] | None:
    """The translated word of a translation item (group id ``tr:<english>:<language>``), else None."""
    if not gid.startswith("tr:"):
        return None
    _, english, lang = gid.split(":")
    return [dict(TRANSLATIONS)[english][LANGS.index(lang)]]


def gen_helpfulness(rng: random.Random, items: list) -> dict:
    gid, qs, answers = rng.choice(items)
    q = rng.choice(qs)
    chosen = rng.choice(answers)
    bad = rng.choices(["evasive", "rude", "truncated"], weights=[0.35, 0.25, 0.40])[0]
    if bad == "evasive":
        rejected = rng.choice(EVASIVE)
    elif bad == "rude":
        rejected = rng.choice(RUDE)
    else:
        # Truncate a (possibly different) variant, so the cut is not always a
        # prefix of the chosen answer.
        rejected = truncate(rng, rng.choice(answers))
    return {
        "question": q,
        "chosen": chosen,
        "rejected": rejected,
        "kind": "helpfulness",
        "sub": bad,
        "gold": translation_gold(gid),
    }


def gen_format(rng: random.Random, items: list) -> dict:
    gid, qs, answers = rng.choice(items)
    base_q = rng.choice(qs)
    q = rng.choice(FORMAT_WRAP).format(q=base_q, ql=low_first(base_q))
    chosen = rng.choice(answers)
    bad = rng.choices(["ramble", "repeat", "off_topic", "impolite"], weights=[0.3, 0.25, 0.25, 0.2])[0]
    if bad == "ramble":
        before = rng.choice(FILLER_BEFORE)
        after1, after2 = rng.sample(FILLER_AFTER, 2)
        rejected = " ".join(
            rng.choice(
                [
                    [before, chosen],
                    [chosen, after1, after2],
                    [before, chosen, after1],
                ]
            )
        )
    elif bad == "repeat":
        rejected = rng.choice(REPEAT_JOIN).format(s=chosen, l=low_first(chosen))
    elif bad == "off_topic":
        if rng.random() < 0.5:
            rejected = rng.choice(OFF_TOPIC)
        else:
            while True:
                ogid, _, oans = rng.choice(items)
                # An answer from another topic (not another language of the
                # same phrase, nor the same definition).
                if ogid.split(":")[:2] != gid.split(":")[:2]:
                    break
            rejected = rng.choice(oans)
    else:
        pre = rng.random() < 0.7
        if pre:
            p = rng.choice(IMPOLITE_PREFIX)
            rejected = p + (chosen if p.endswith(". ") else low_first(chosen))
        else:
            rejected = chosen
        if not pre or rng.random() < 0.3:
            rejected += rng.choice(IMPOLITE_SUFFIX)
    return {
        "question": q,
        "chosen": chosen,
        "rejected": rejected,
        "kind": "format",
        "sub": bad,
        "gold": translation_gold(gid),
    }


# --------------------------------------------------------------------------
# Assembly, split and checks
# --------------------------------------------------------------------------

MAX_ROWS_PER_QUESTION = {"arithmetic": 1, "facts": 2, "helpfulness": 3, "format": 2}


def generate_rows(rng: random.Random, total: int) -> list[dict]:
    items = build_items()
    gens = {
        "arithmetic": gen_arithmetic,
        "facts": gen_facts,
        "helpfulness": lambda r: gen_helpfulness(r, items),
        "format": lambda r: gen_format(r, items),
    }
    rows: list[dict] = []
    seen_triples: set[tuple[str, str, str]] = set()
    q_count: Counter = Counter()
    q_kind: dict[str, str] = {}
    for kind, share in KIND_SHARE.items():
        target = round(total * share)
        made, attempts = 0, 0
        while made < target:
            attempts += 1
            assert attempts < target * 200, f"{kind}: cannot make {target} rows"
            row = gens[kind](rng)
            q = row["question"]
            triple = (q, row["chosen"], row["rejected"])
            if row["chosen"] == row["rejected"] or triple in seen_triples:
                continue
            if q_kind.get(q, kind) != kind or q_count[q] >= MAX_ROWS_PER_QUESTION[kind]:
                continue
            seen_triples.add(triple)
            q_count[q] += 1
            q_kind[q] = kind
            rows.append(row)
            made += 1
    for row in rows:
        row["system"] = "" if rng.random() < SYSTEM_EMPTY_SHARE else rng.choice(SYSTEM_PROMPTS)
    return rows


def split_rows(rng: random.Random, rows: list[dict], n_heldout: int) -> tuple[list[dict], list[dict]]:
    """Split by question so that no held-out question appears in train."""
    by_q: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_q[row["question"]].append(row)
    quota = {k: round(n_heldout * s) for k, s in KIND_SHARE.items()}
    taken = Counter()
    heldout_q: set[str] = set()
    questions = sorted(by_q)
    rng.shuffle(questions)
    # Prefer single-row groups first so that the quotas are met exactly.
    questions.sort(key=lambda q: len(by_q[q]))
    for q in questions:
        group = by_q[q]
        kind = group[0]["kind"]
        if taken[kind] + len(group) <= quota[kind]:
            heldout_q.add(q)
            taken[kind] += len(group)
    train = [r for r in rows if r["question"] not in heldout_q]
    heldout = [r for r in rows if r["question"] in heldout_q]
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def single_feature_accuracy(rows: list[dict]) -> tuple[float, str]:
    """Best accuracy of ranking chosen over rejected with ONE surface feature.

    Features: count of any single token, word count, and "ends with . ! ?".
    Ties count as half right.  Each feature is tried in both directions.
    """
    wins: Counter = Counter()
    losses: Counter = Counter()
    for row in rows:
        c, r = Counter(_tokens(row["chosen"])), Counter(_tokens(row["rejected"]))
        feats_c = dict(c)
        feats_r = dict(r)
        feats_c["<words>"], feats_r["<words>"] = words(row["chosen"]), words(row["rejected"])
        feats_c["<ends_sentence>"] = int(ends_sentence(row["chosen"]))
        feats_r["<ends_sentence>"] = int(ends_sentence(row["rejected"]))
        for f in set(feats_c) | set(feats_r):
            vc, vr = feats_c.get(f, 0), feats_r.get(f, 0)
            if vc > vr:
                wins[f] += 1
            elif vc < vr:
                losses[f] += 1
    n = len(rows)
    best, best_name = 0.5, ""
    for f in sorted(set(wins) | set(losses)):
        ties = n - wins[f] - losses[f]
        for name, good in ((f"more {f}", wins[f]), (f"fewer {f}", losses[f])):
            acc = (good + 0.5 * ties) / n
            if acc > best:
                best, best_name = acc, name
    return best, best_name


def check(train: list[dict], heldout: list[dict], n_bytes: int) -> None:
    for split_name, rows in (("train", train), ("heldout", heldout)):
        for row in rows:
            out = {k: row[k] for k in FIELDS}
            assert list(out) == list(FIELDS), out
            for k in FIELDS:
                assert isinstance(out[k], str), f"{split_name}: {k} is not a str"
            for k in ("question", "chosen", "rejected"):
                assert out[k].strip(), f"{split_name}: empty {k}: {out}"
            assert out["chosen"] != out["rejected"], f"chosen == rejected: {out}"
            c = out["chosen"]
            assert ends_sentence(c), f"chosen is not a complete sentence: {c!r}"
            assert 3 <= words(c) <= MAX_CHOSEN_WORDS, f"chosen length: {c!r}"
            assert words(out["rejected"]) <= MAX_REJECTED_WORDS, out["rejected"]
            assert words(out["question"]) <= 30, f"question too long: {out}"
            if row["gold"]:
                assert any(mentions(c, g) for g in row["gold"]), f"gold answer missing from chosen: {row}"
                assert not any(mentions(out["question"], g) for g in row["gold"]), f"gold in the question: {row}"
            if row["kind"] == "arithmetic":
                res = re.escape(row["result"])
                pat = rf"(?<![\w-]){res}(?![\w-])"
                assert re.search(pat, c), f"result missing from chosen: {out}"
                assert not re.search(pat, out["rejected"]), f"correct result appears in rejected: {out}"
        frac_empty = sum(r["system"] == "" for r in rows) / len(rows)
        assert 0.5 <= frac_empty <= 0.7, f"{split_name}: empty system {frac_empty:.2f}"
        kinds = Counter(r["kind"] for r in rows)
        for k, share in KIND_SHARE.items():
            got = kinds[k] / len(rows)
            assert abs(got - share) < 0.03, f"{split_name}: {k} share {got:.3f}"
    triples = [(r["question"], r["chosen"], r["rejected"]) for r in train + heldout]
    assert len(set(triples)) == len(triples), "duplicate (question, chosen, rejected)"
    leak = {r["question"] for r in train} & {r["question"] for r in heldout}
    assert not leak, f"{len(leak)} held-out questions appear in train, e.g. {leak}"
    assert abs(len(train) - N_TRAIN) <= 30, f"train has {len(train)} rows"
    assert abs(len(heldout) - N_HELDOUT) <= 10, f"heldout has {len(heldout)} rows"
    for r in train + heldout:
        if r["kind"] == "helpfulness" and r["sub"] == "truncated":
            assert not ends_sentence(r["rejected"]), r
    acc, feat = single_feature_accuracy(train)
    assert acc <= MAX_SINGLE_FEATURE_ACC, f"one surface feature ({feat}) separates the pairs too well: {acc:.3f}"
    assert n_bytes <= MAX_TOTAL_BYTES, f"outputs are {n_bytes} bytes"


def write_jsonl(path: Path, rows: list[dict], gold: bool = False) -> int:
    """One JSON object per row: the Orca columns, plus ``gold`` (accepted answers, ``[]`` when the question is
    open-ended) and ``kind`` (arithmetic, facts, helpfulness, format: evaluate.py reports gold accuracy per kind)
    when asked for."""

    def record(r: dict) -> dict:
        out = {k: r[k] for k in FIELDS}
        if gold:
            out[GOLD] = r["gold"] or []
            out["kind"] = r["kind"]
        return out

    text = "".join(json.dumps(record(r), ensure_ascii=False) + "\n" for r in rows)
    data = text.encode("utf-8")
    path.write_bytes(data)
    return len(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("data/orca_sample"))
    ap.add_argument("--verbose", action="store_true", help="also print counts per sub-kind")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    rows = generate_rows(rng, N_TRAIN + N_HELDOUT)
    train, heldout = split_rows(rng, rows, N_HELDOUT)

    args.out.mkdir(parents=True, exist_ok=True)
    n_bytes = write_jsonl(args.out / "train.jsonl", train)
    n_bytes += write_jsonl(args.out / "heldout.jsonl", heldout, gold=True)
    check(train, heldout, n_bytes)

    kinds = Counter(r["kind"] for r in rows)
    acc, feat = single_feature_accuracy(train)
    print(
        f"wrote {args.out}: train={len(train)} heldout={len(heldout)} "
        + " ".join(f"{k}={kinds[k]}" for k in KIND_SHARE)
        + f" bytes={n_bytes} best_single_feature_acc={acc:.3f} ({feat})"
    )
    if args.verbose:
        subs = Counter(f"{r['kind']}/{r['sub']}" for r in rows)
        for k in sorted(subs):
            print(f"  {k}: {subs[k]}")
        ch = [words(r["chosen"]) for r in rows]
        print(f"  chosen words: min={min(ch)} max={max(ch)} share 8-40={sum(8 <= w <= 40 for w in ch) / len(ch):.2f}")
        print(f"  empty system: {sum(r['system'] == '' for r in rows) / len(rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
