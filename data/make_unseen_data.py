"""Generate a second Orca-schema preference set that shares nothing with ``data/orca_sample`` but the schema.

``data/make_sample_data.py`` writes the demo's data; the demo's settings were chosen on it. To check that what PPO
learns with those settings carries over to data they were never tuned on, this script writes another set: other
tables, other question and answer templates, other kinds of bad answers, another seed. Same columns
(``system``, ``question``, ``chosen``, ``rejected``; held-out rows also ``gold``, the accepted answers, and
``kind``, the kind of question), same split sizes. Never use it to choose settings: it is only worth anything as
long as nothing was tuned on it.

Usage::

    python data/make_unseen_data.py [--seed 17] [--out out/unseen_data]
    python -m rlhf.pipeline --config configs/demo.json --dataset out/unseen_data/train.jsonl ...

(the pipeline's ``heldout`` entry names the evaluation file: write a config copy that points at
``out/unseen_data/heldout.jsonl``). Deterministic for a given seed; standard library only.
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
N_TRAIN, N_HELDOUT = 3000, 400
SHARE = {"math": 0.25, "knowledge": 0.25, "advice": 0.30, "brief": 0.20}
# Rows per distinct question: the open questions are few, so they come back with other answers and rejections.
PER_QUESTION = {"math": 1, "knowledge": 5, "advice": 30, "brief": 8}

SYSTEMS = [
    "You answer questions for a school quiz app.",
    "Be a concise, friendly helper.",
    "You are an assistant for a library help desk.",
    "Give correct answers. Keep them short.",
    "You are a tutor who explains things simply.",
    "Respond clearly and politely.",
    "You help people with everyday questions.",
    "Answer as a careful, factual assistant.",
]

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + spell(rest))


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word.lower())}(?![\w-])", text.lower()) is not None


# ---------------------------------------------------------------------------------------------------------- math

STORIES = [
    (
        "A shop sold {a} bikes in the morning and {b} in the afternoon. How many bikes did it sell that day?",
        "add",
        "The shop sold {r} bikes that day: {a} and {b} make {r}.",
    ),
    (
        "A train has {a} passengers and {b} more get on at the next station. How many passengers are on the train?",
        "add",
        "There are {r} passengers on the train, since {a} + {b} = {r}.",
    ),
    (
        "A book has {a} pages and Mia has read {b} of them. How many pages are left?",
        "sub",
        "Mia has {r} pages left to read, because {a} - {b} = {r}.",
    ),
    (
        "A jar held {a} sweets and the children ate {b}. How many sweets remain?",
        "sub",
        "{r} sweets remain in the jar, since {a} take away {b} is {r}.",
    ),
    (
        "Each box holds {a} cups. How many cups are in {b} boxes?",
        "mul",
        "{b} boxes hold {r} cups, because {a} times {b} is {r}.",
    ),
    (
        "A ticket costs {a} dollars. How much do {b} tickets cost?",
        "mul",
        "{b} tickets cost {r} dollars, since {a} x {b} = {r}.",
    ),
    (
        "{a} stickers are shared equally among {b} friends. How many does each friend get?",
        "div",
        "Each friend gets {r} stickers, because {a} divided by {b} is {r}.",
    ),
]
MATH_Q = {
    "add": [
        "Compute {a} + {b}.",
        "What's {a} added to {b}?",
        "Find the total of {a} and {b}.",
        "{a} and {b} together make what?",
    ],
    "sub": [
        "Compute {a} - {b}.",
        "What's {b} subtracted from {a}?",
        "Find {a} less {b}.",
        "How much is left if you take {b} from {a}?",
    ],
    "mul": [
        "Compute {a} x {b}.",
        "What's {a} multiplied by {b}?",
        "Find {a} lots of {b}.",
        "How much is {b} groups of {a}?",
    ],
    "div": [
        "Compute {a} / {b}.",
        "What's {a} divided by {b}?",
        "Find {a} split into {b} equal parts.",
        "How many times does {b} go into {a}?",
    ],
}
MATH_A = [
    "The result is {r}.",
    "{a} {op} {b} gives {r}.",
    "It comes to {r}.",
    "Working it out, {a} {op} {b} is {r}.",
    "That equals {r}.",
]
OPS = {"add": "plus", "sub": "minus", "mul": "times", "div": "divided by"}
MATH_BAD = [
    "You should be able to do this one in your head.",
    "Try using your fingers to count it out.",
    "Numbers are not really my area.",
    "I'd estimate it's somewhere around there.",
    "Work it out on paper and you'll see.",
    "It's a bit much to calculate right now.",
]


def gen_math(rng: random.Random) -> dict:
    story = rng.random() < 0.35
    if story:
        q_t, op, a_t = rng.choice(STORIES)
    else:
        op = rng.choice(list(MATH_Q))
        q_t, a_t = rng.choice(MATH_Q[op]), rng.choice(MATH_A)
    while True:
        a, b = rng.randint(3, 40), rng.randint(2, 25)
        if op == "sub":
            a = a + b
        if op == "mul":
            a, b = rng.randint(2, 12), rng.randint(2, 9)
        if op == "div":
            b = rng.randint(2, 9)
            a = b * rng.randint(2, 12)
        r = {"add": a + b, "sub": a - b, "mul": a * b, "div": a // b}[op]
        if r not in (a, b):
            break
    fmt = {"a": a, "b": b, "op": OPS[op]}
    question, chosen = q_t.format(**fmt), a_t.format(r=r, **fmt)
    if rng.random() < 0.45:
        wrong = r + rng.choice([-2, -1, 1, 2, 10, -10])
        wrong = wrong if wrong > 0 else r + 1
        rejected = a_t.format(r=wrong, **fmt)
    else:
        rejected = rng.choice(MATH_BAD)
    return {"question": question, "chosen": chosen, "rejected": rejected, "gold": [str(r), spell(r)]}


# ----------------------------------------------------------------------------------------------------- knowledge

# (question templates, answer templates, table of (subject, answer, plausible wrong answer))
KNOWLEDGE = {
    "young": (
        ["What is a baby {s} called?", "What do you call a young {s}?", "A young {s} is known as what?"],
        ["A baby {s} is called a {x}.", "A young {s} is known as a {x}.", "We call a young {s} a {x}."],
        [
            ("cat", "kitten", "cub"),
            ("dog", "puppy", "kitten"),
            ("cow", "calf", "foal"),
            ("sheep", "lamb", "kid"),
            ("horse", "foal", "calf"),
            ("duck", "duckling", "chick"),
            ("frog", "tadpole", "larva"),
            ("bear", "cub", "pup"),
            ("goat", "kid", "lamb"),
            ("swan", "cygnet", "gosling"),
            ("kangaroo", "joey", "cub"),
            ("owl", "owlet", "chick"),
            ("deer", "fawn", "calf"),
            ("goose", "gosling", "duckling"),
            ("pig", "piglet", "calf"),
            ("hen", "chick", "hatchling"),
            ("seal", "pup", "cub"),
            ("eagle", "eaglet", "owlet"),
        ],
    ),
    "language": (
        [
            "What language do most people speak in {s}?",
            "Which language is mainly spoken in {s}?",
            "In {s}, what is the main language?",
        ],
        ["Most people in {s} speak {x}.", "The main language of {s} is {x}.", "In {s}, people mainly speak {x}."],
        [
            ("Brazil", "Portuguese", "Spanish"),
            ("Mexico", "Spanish", "Portuguese"),
            ("Japan", "Japanese", "Chinese"),
            ("Germany", "German", "Dutch"),
            ("Egypt", "Arabic", "French"),
            ("Argentina", "Spanish", "Italian"),
            ("Sweden", "Swedish", "Norwegian"),
            ("Greece", "Greek", "Turkish"),
            ("Poland", "Polish", "Russian"),
            ("Thailand", "Thai", "Vietnamese"),
            ("Italy", "Italian", "Spanish"),
            ("the Netherlands", "Dutch", "German"),
            ("Portugal", "Portuguese", "Spanish"),
            ("Turkey", "Turkish", "Greek"),
            ("Korea", "Korean", "Japanese"),
        ],
    ),
    "continent": (
        ["Which continent is {s} on?", "On what continent would you find {s}?", "{s} is part of which continent?"],
        ["{s} is on the continent of {x}.", "You would find {s} in {x}.", "{s} is part of {x}."],
        [
            ("Kenya", "Africa", "Asia"),
            ("Peru", "South America", "Africa"),
            ("Vietnam", "Asia", "Europe"),
            ("Norway", "Europe", "North America"),
            ("Canada", "North America", "Europe"),
            ("Ghana", "Africa", "South America"),
            ("Chile", "South America", "Asia"),
            ("Nepal", "Asia", "Africa"),
            ("Austria", "Europe", "Asia"),
            ("Morocco", "Africa", "Europe"),
            ("Bolivia", "South America", "Africa"),
            ("Mongolia", "Asia", "Europe"),
        ],
    ),
    "next_day": (
        ["Which day comes after {s}?", "What day follows {s}?", "If today is {s}, what day is tomorrow?"],
        ["The day after {s} is {x}.", "{x} comes right after {s}.", "After {s} comes {x}."],
        [
            ("Monday", "Tuesday", "Wednesday"),
            ("Tuesday", "Wednesday", "Thursday"),
            ("Wednesday", "Thursday", "Friday"),
            ("Thursday", "Friday", "Saturday"),
            ("Friday", "Saturday", "Sunday"),
            ("Saturday", "Sunday", "Monday"),
            ("Sunday", "Monday", "Tuesday"),
        ],
    ),
    "next_month": (
        ["Which month comes after {s}?", "What month follows {s}?", "Name the month right after {s}."],
        ["The month after {s} is {x}.", "{x} comes right after {s}.", "After {s} comes {x}."],
        [
            ("January", "February", "March"),
            ("February", "March", "April"),
            ("March", "April", "May"),
            ("April", "May", "June"),
            ("May", "June", "July"),
            ("June", "July", "August"),
            ("July", "August", "September"),
            ("August", "September", "October"),
            ("September", "October", "November"),
            ("October", "November", "December"),
            ("November", "December", "January"),
        ],
    ),
    "comparative": (
        [
            "What is the comparative form of {s}?",
            'How do you say "more {s}" in one word?',
            "Give the comparative of the adjective {s}.",
        ],
        [
            "The comparative of {s} is {x}.",
            'The comparative form of "{s}" is "{x}".',
            "You say {x}, the comparative of {s}.",
        ],
        [
            ("good", "better", "gooder"),
            ("bad", "worse", "badder"),
            ("far", "farther", "farer"),
            ("big", "bigger", "biger"),
            ("happy", "happier", "happyer"),
            ("little", "less", "littler"),
            ("thin", "thinner", "thiner"),
            ("easy", "easier", "easyer"),
            ("hot", "hotter", "hoter"),
            ("busy", "busier", "busyer"),
        ],
    ),
    "shape": (
        [
            "What do you call a shape with {s} sides?",
            "A flat shape with {s} straight sides is called what?",
            "Which shape has {s} sides?",
        ],
        ["A shape with {s} sides is a {x}.", "It is called a {x}.", "With {s} sides, the shape is a {x}."],
        [
            ("three", "triangle", "square"),
            ("five", "pentagon", "hexagon"),
            ("six", "hexagon", "octagon"),
            ("eight", "octagon", "hexagon"),
            ("ten", "decagon", "octagon"),
            ("seven", "heptagon", "pentagon"),
        ],
    ),
}
KNOW_BAD = [
    "I'm honestly not certain about that one.",
    "That's trivia, and I don't keep trivia in my head.",
    "You could look it up in an encyclopedia.",
    "People disagree about that, so I can't say.",
]


def gen_knowledge(rng: random.Random) -> dict:
    table = rng.choice(list(KNOWLEDGE))
    qs, ans, rows = KNOWLEDGE[table]
    subject, right, wrong = rng.choice(rows)
    question = rng.choice(qs).format(s=subject)
    template = rng.choice(ans)
    chosen = template.format(s=subject, x=right)
    if rng.random() < 0.75:
        rejected = (template if rng.random() < 0.7 else rng.choice(ans)).format(s=subject, x=wrong)
    else:
        rejected = rng.choice(KNOW_BAD)
    chosen, question = chosen[0].upper() + chosen[1:], question[0].upper() + question[1:]
    rejected = rejected[0].upper() + rejected[1:]
    gold = None if has_word(question, right) else [right]
    return {"question": question, "chosen": chosen, "rejected": rejected, "gold": gold}


# -------------------------------------------------------------------------------------------------- advice, brief

ADVICE = [
    (
        ["How can I keep my bike chain from rusting?", "What stops a bicycle chain from rusting?"],
        [
            "Wipe the chain dry after riding in the rain and oil it lightly every few weeks.",
            "Keep the chain clean and dry, and put a little bike oil on it now and then.",
        ],
    ),
    (
        ["How do I get a stain out of a shirt?", "What is a good way to remove a shirt stain?"],
        [
            "Rinse the stain with cold water as soon as you can, rub in a little soap, and wash the shirt as usual.",
            "Treat it quickly: cold water first, then a drop of washing liquid, then a normal wash.",
        ],
    ),
    (
        ["How do I prepare for a job interview?", "What should I do before a job interview?"],
        [
            "Read about the company, practise answers to common questions, and plan to arrive a little early.",
            "Learn what the company does, rehearse a few answers out loud, and lay out your clothes the night before.",
        ],
    ),
    (
        ["How can I drink more water during the day?", "Any tips for drinking enough water?"],
        [
            "Carry a refillable bottle and have a glass of water with every meal.",
            "Keep a bottle on your desk and drink a glass whenever you take a break.",
        ],
    ),
    (
        ["How do I make my phone battery last longer?", "What helps a phone battery last all day?"],
        [
            "Lower the screen brightness, close apps you are not using, and turn off location when you don't need it.",
            "Dim the screen, switch off features you aren't using, and avoid letting the battery get very hot.",
        ],
    ),
    (
        ["How do I start running if I have never run before?", "What is a good way for a beginner to start running?"],
        [
            "Alternate a minute of running with two minutes of walking, three times a week, and build up slowly.",
            "Begin with short run-walk sessions a few times a week and add a little running each week.",
        ],
    ),
    (
        ["How can I learn new words in a foreign language?", "What is a good way to memorise vocabulary?"],
        [
            "Learn a few words every day with flashcards and use them in short sentences of your own.",
            "Review small sets of words daily and say them out loud in sentences.",
        ],
    ),
    (
        ["How do I keep bread fresh for longer?", "What is the best way to store bread?"],
        [
            "Keep it in a bread bin or a paper bag at room temperature, and freeze what you won't eat in two days.",
            "Store it in a cool, dry place in a paper bag, and freeze slices you will not eat soon.",
        ],
    ),
    (
        ["Why should I stretch after exercise?", "What is the point of stretching after a workout?"],
        [
            "Stretching helps your muscles relax and keeps them flexible, which can make you feel less stiff.",
            "It relaxes the muscles you used and keeps you flexible, so you feel less stiff the next day.",
        ],
    ),
    (
        ["How do I write a short thank-you note?", "What should a thank-you note say?"],
        [
            "Name what you are thankful for, say how it helped you, and end with a warm sign-off.",
            "Say thank you for the specific thing, mention why it mattered, and close kindly.",
        ],
    ),
    (
        ["How can I focus better while studying?", "What helps me concentrate when I study?"],
        [
            "Put your phone in another room, work in short blocks with breaks, and keep one task in front of you.",
            "Remove distractions, study in 25-minute blocks, and take short breaks in between.",
        ],
    ),
    (
        ["How do I look after a new tattoo?", "What care does a fresh tattoo need?"],
        [
            "Keep it clean, pat it dry, use a thin layer of unscented lotion, and keep it out of the sun.",
            "Wash it gently, let it breathe, moisturise lightly, and avoid sun and swimming for a couple of weeks.",
        ],
    ),
    (
        ["Why do onions make you cry?", "What makes my eyes water when I cut onions?"],
        [
            "Cutting an onion releases a gas that irritates your eyes, so they make tears to wash it away.",
            "Onions give off an irritating gas when cut, and your eyes water to protect themselves.",
        ],
    ),
    (
        ["How do I pick a ripe avocado?", "How can I tell if an avocado is ripe?"],
        [
            "Press it gently: a ripe avocado gives a little but is not mushy.",
            "Squeeze it softly in your palm; if it yields slightly, it is ready to eat.",
        ],
    ),
    (
        ["What is a budget?", "Can you explain what a budget is?"],
        [
            "A budget is a plan for how you will spend and save the money you expect to get.",
            "A budget lists the money you expect to receive and decides in advance how to use it.",
        ],
    ),
    (
        ["What is recycling?", "Can you explain recycling simply?"],
        [
            "Recycling means turning used materials such as paper, glass and plastic into new products.",
            "Recycling is collecting used materials and processing them so they can be made into new things.",
        ],
    ),
    (
        ["How do I clean a kettle with limescale?", "How can I remove limescale from a kettle?"],
        [
            "Boil a mix of water and white vinegar in it, let it stand for an hour, then rinse it well.",
            "Fill it with water and a little vinegar or lemon juice, boil it, leave it, and rinse thoroughly.",
        ],
    ),
    (
        ["Why do we yawn?", "What makes people yawn?"],
        [
            "Nobody is quite sure, but yawning may help cool the brain and often happens when we are tired or bored.",
            "Scientists think yawning may help cool the brain, and it is common when we are sleepy or bored.",
        ],
    ),
    (
        ["How do I plant a seed?", "What is the right way to plant seeds?"],
        [
            "Push the seed into moist soil about twice as deep as it is wide, and keep the soil damp and warm.",
            "Plant it in damp soil at a depth of about twice its size, then keep it watered and in a warm spot.",
        ],
    ),
    (
        ["How can I be more on time?", "How do I stop being late?"],
        [
            "Plan to arrive ten minutes early, set reminders, and get things ready the night before.",
            "Set alarms with extra time built in and prepare what you need before you go to bed.",
        ],
    ),
]
DODGES = [
    "I'd prefer not to get into that.",
    "Everybody has to find their own way with things like this.",
    "That's a question for an expert, not me.",
    "Let's talk about something else instead.",
    "There's no simple answer to that, I'm afraid.",
]
SNAPS = [
    "Why are you asking me? Figure it out.",
    "That's not worth my time.",
    "Ugh, everybody knows this already.",
    "Search online, it's not hard.",
]
PADDING = [
    "That is a great thing to wonder about, and I'm glad you asked me today.",
    "There are lots of different opinions, and many books have been written on topics like this one.",
    "I hope this is useful, and feel free to come back with more questions whenever you like.",
    "Of course, every situation is a little different, so your experience may vary quite a bit.",
]
BRIEF_WRAP = ["{q} Short answer, please.", "In a sentence: {q}", "{q} Keep it brief.", "Just the key point: {q}"]


def cut(rng: random.Random, text: str) -> str:
    toks = text.split()
    return " ".join(toks[: rng.randint(3, max(3, len(toks) // 2))]).rstrip(",;:.")


def gen_advice(rng: random.Random) -> dict:
    qs, answers = rng.choice(ADVICE)
    chosen = rng.choice(answers)
    kind = rng.choice(["dodge", "snap", "cut"])
    rejected = rng.choice(DODGES) if kind == "dodge" else rng.choice(SNAPS) if kind == "snap" else cut(rng, chosen)
    return {"question": rng.choice(qs), "chosen": chosen, "rejected": rejected, "gold": None}


def gen_brief(rng: random.Random) -> dict:
    qs, answers = rng.choice(ADVICE)
    chosen = rng.choice(answers)
    question = rng.choice(BRIEF_WRAP).format(q=rng.choice(qs))
    kind = rng.choice(["pad", "echo", "drift"])
    if kind == "pad":
        rejected = " ".join([rng.choice(PADDING), chosen, rng.choice(PADDING)])
    elif kind == "echo":
        rejected = f"{chosen} Once more: {chosen[0].lower()}{chosen[1:]}"
    else:
        other = rng.choice([a for q, a in ADVICE if q is not qs])
        rejected = rng.choice(other)
    return {"question": question, "chosen": chosen, "rejected": rejected, "gold": None}


# ------------------------------------------------------------------------------------------------- split, write

GENERATORS = {"math": gen_math, "knowledge": gen_knowledge, "advice": gen_advice, "brief": gen_brief}


def generate(seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    rows, seen, per_question = [], set(), Counter()
    total = N_TRAIN + N_HELDOUT
    for kind, share in SHARE.items():
        made = 0
        while made < round(total * share):
            row = GENERATORS[kind](rng)
            key = (row["question"], row["chosen"], row["rejected"])
            if row["chosen"] == row["rejected"] or key in seen or per_question[row["question"]] >= PER_QUESTION[kind]:
                continue
            seen.add(key)
            per_question[row["question"]] += 1
            row["kind"] = kind
            row["system"] = "" if rng.random() < 0.6 else rng.choice(SYSTEMS)
            rows.append(row)
            made += 1
    # Split by question, each kind in its share, so no held-out question is seen in training.
    by_q: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_q[row["question"]].append(row)
    questions = sorted(by_q)
    rng.shuffle(questions)
    quota, taken, held = {k: round(N_HELDOUT * s) for k, s in SHARE.items()}, Counter(), set()
    for q in sorted(questions, key=lambda q: len(by_q[q])):
        kind = by_q[q][0]["kind"]
        if taken[kind] + len(by_q[q]) <= quota[kind]:
            held.add(q)
            taken[kind] += len(by_q[q])
    train = [r for r in rows if r["question"] not in held]
    heldout = [r for r in rows if r["question"] in held]
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


def check(train: list[dict], heldout: list[dict]) -> None:
    assert not {r["question"] for r in train} & {r["question"] for r in heldout}, "held-out question in train"
    for row in train + heldout:
        assert all(isinstance(row[k], str) for k in FIELDS) and row["chosen"] != row["rejected"], row
        if row["gold"]:
            assert any(has_word(row["chosen"], g) for g in row["gold"]), row
            assert not any(has_word(row["question"], g) for g in row["gold"]), row


def write(path: Path, rows: list[dict], gold: bool) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for r in rows:
            out = {k: r[k] for k in FIELDS}
            if gold:  # ground truth and the kind of question, for evaluate.py; the stages ignore both
                out["gold"] = r["gold"] or []
                out["kind"] = r["kind"]
            handle.write(json.dumps(out, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, default=Path("out/unseen_data"))
    args = parser.parse_args(argv)
    train, heldout = generate(args.seed)
    check(train, heldout)
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "train.jsonl", train, gold=False)
    write(args.out / "heldout.jsonl", heldout, gold=True)
    kinds = Counter(r["kind"] for r in train + heldout)
    print(
        f"wrote {args.out}: train={len(train)} heldout={len(heldout)} "
        + " ".join(f"{k}={kinds[k]}" for k in SHARE)
        + f" heldout_with_gold={sum(bool(r['gold']) for r in heldout)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
