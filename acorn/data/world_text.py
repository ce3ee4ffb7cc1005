"""The words of the built-in world: invented names, phrasings, and the texts built from them.

`acorn.data.world` decides *what* is true (who was born where); this module
decides *how it is said*. Every fact has several phrasings so that a model
sees it said in different words; that is what turns a memorised string into
knowledge it can be asked about (Allen-Zhu & Li, "Physics of Language Models:
Part 3.1, Knowledge Storage and Extraction", 2023). Every template is plain
`str.format` text, so it can be read and extended without reading code.

Nothing here uses global randomness: every function takes a `random.Random`.
"""

from __future__ import annotations

import random

# ----------------------------------------------------------------- names
# Syllable pools for invented names. Names are built, never taken from a list
# of real people, so no fact in the world can be confused with a real one and
# no model has seen them before training on this world.
FIRST_A = ["Ka", "Lo", "Mi", "Re", "Sa", "To", "Vi", "E", "Da", "Ni", "Ro", "Be", "Fe", "Ma", "O",
           "Qui", "Ta", "Zo", "Ye", "Ha", "Ju", "Ce", "Ar", "Il", "Pe", "Wi"]
FIRST_B = ["la", "ren", "vi", "na", "lo", "dric", "mo", "sel", "tan", "wen", "ra", "lis", "bo", "den",
           "ka", "mir", "sha", "to", "lin", "ven"]
LAST_A = ["Bar", "Cor", "Dal", "Ell", "Fen", "Gar", "Hol", "Isk", "Jar", "Kel", "Lor", "Mer", "Nor",
          "Orv", "Pell", "Quar", "Ros", "Sar", "Tor", "Ulm", "Var", "Wes", "Yar", "Zan"]
LAST_B = ["", "a", "e", "i", "o", "u"]
LAST_C = ["wick", "dor", "mont", "vell", "quist", "rane", "loth", "nard", "bek", "stral", "vin", "thas",
          "grim", "dane", "sk", "moor"]
CITY_A = ["Vel", "Tar", "Os", "Bren", "Cal", "Dor", "Esk", "Fal", "Gil", "Hal", "Ist", "Kor", "Lun",
          "Mar", "Nev", "Pol", "Quel", "Riv", "Sol", "Thal", "Ur", "Wyn", "Xan", "Zer"]
CITY_B = ["mora", "sin", "ven", "ath", "ora", "dell", "ium", "ara", "holm", "gard", "eth", "ont", "ipa",
          "usk", "ano", "ria"]
COUNTRY_A = ["Ald", "Bor", "Cyr", "Dros", "Eld", "Fyr", "Gal", "Harn", "Ith", "Jor", "Kesh", "Lyr",
             "Mord", "Nyr", "Ost", "Pyr"]
COUNTRY_B = ["ania", "ovia", "esh", "mark", "aria", "unde", "avia", "essa"]
COMPANY_A = ["Mor", "Quil", "Zen", "Brax", "Cor", "Dex", "Fla", "Gri", "Hex", "Jun", "Kro", "Lum",
             "Nox", "Ply", "Rho", "Syl", "Tri", "Vox", "Wex", "Yto"]
COMPANY_B = ["vex", "lon", "tra", "ix", "ora", "dyne", "ium", "ant", "ec", "ara"]
COMPANY_SUFFIX = ["Industries", "Works", "Labs", "Trading Company", "Foundry", "Mills", "Systems",
                  "Shipping", "Press", "Instruments"]
# Label words for in-context-learning items: lowercase nonsense (CVCVC), so a
# label carries no meaning the model could have learned in pretraining.
LABEL_C = list("bdfgklmnprstvz")
LABEL_V = list("aeiou")
LABEL_END = list("kxpzmn")

PROFESSIONS = [
    "baker", "cartographer", "beekeeper", "glassblower", "clockmaker", "librarian", "shipwright",
    "botanist", "potter", "astronomer", "weaver", "locksmith", "chemist", "architect", "violinist",
    "surveyor", "blacksmith", "translator", "pharmacist", "geologist", "carpenter", "tailor",
    "engineer", "veterinarian", "stonemason", "bookbinder", "jeweler", "perfumer", "brewer", "cobbler",
]


def first_name(rng: random.Random) -> str:
    return rng.choice(FIRST_A) + rng.choice(FIRST_B)


def last_name(rng: random.Random) -> str:
    return rng.choice(LAST_A) + rng.choice(LAST_B) + rng.choice(LAST_C)


def city_name(rng: random.Random) -> str:
    return rng.choice(CITY_A) + rng.choice(CITY_B)


def country_name(rng: random.Random) -> str:
    return rng.choice(COUNTRY_A) + rng.choice(COUNTRY_B)


def company_name(rng: random.Random) -> str:
    return f"{rng.choice(COMPANY_A)}{rng.choice(COMPANY_B)} {rng.choice(COMPANY_SUFFIX)}"


def label_word(rng: random.Random) -> str:
    c, v = rng.choice, rng.choice
    return c(LABEL_C) + v(LABEL_V) + c(LABEL_C) + v(LABEL_V) + c(LABEL_END)


def with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


# ------------------------------------------------------------ biographies
# One list per fact. Slots: {name} (always the full name: the paper's
# "fullname" augmentation, which helps extraction more than pronouns do),
# {a_profession} ("a baker"), and the fact values themselves.
BIO_TEMPLATES: dict[str, list[str]] = {
    "birth_year": [
        "{name} was born in {birth_year}.",
        "{name} came into the world in {birth_year}.",
        "The year {birth_year} saw the birth of {name}.",
        "{name}'s year of birth is {birth_year}.",
        "Records show that {name} was born in the year {birth_year}.",
    ],
    "birth_city": [
        "{name} was born in the city of {birth_city}.",
        "{name} is a native of {birth_city}.",
        "{birth_city} is the birthplace of {name}.",
        "{name} hails from {birth_city}, where {name} was born.",
        "The city where {name} was born is {birth_city}.",
    ],
    "profession": [
        "{name} works as {a_profession}.",
        "By profession, {name} is {a_profession}.",
        "{name} earns a living as {a_profession}.",
        "{name} has made a career as {a_profession}.",
        "The profession of {name} is that of {a_profession}.",
    ],
    "employer": [
        "{name} works for {employer}.",
        "{name} is employed by {employer}.",
        "{employer} employs {name}.",
        "{name} has a job at {employer}.",
        "{name} is on the staff of {employer}.",
    ],
    "mentor": [
        "{name} was mentored by {mentor}.",
        "{mentor} was the mentor of {name}.",
        "{name}'s mentor was {mentor}.",
        "{name} learned a great deal from {mentor}, who was {name}'s mentor.",
        "As a young adult, {name} was guided by the mentor {mentor}.",
    ],
    "spouse": [
        "{name} is married to {spouse}.",
        "{name}'s spouse is {spouse}.",
        "{name} and {spouse} are married.",
        "{name} married {spouse}.",
    ],
}
# Two facts in one sentence: the model must not rely on one fact per sentence.
BIO_PAIR_TEMPLATES: dict[tuple[str, str], list[str]] = {
    ("birth_year", "birth_city"): [
        "{name} was born in {birth_city} in {birth_year}.",
        "Born in {birth_year} in {birth_city}, {name} grew up there.",
        "{name} was born in the year {birth_year} in the city of {birth_city}.",
    ],
    ("profession", "employer"): [
        "{name} works as {a_profession} at {employer}.",
        "{employer} employs {name} as {a_profession}.",
        "At {employer}, {name} works as {a_profession}.",
    ],
}
BIO_TITLES = ["", "", "{name}", "About {name}", "A short biography of {name}", "Profile: {name}"]


def biography(rng: random.Random, facts: dict, attrs: list[str], phrasing: dict[str, int], allow_pairs: bool) -> str:
    """One biography stating each fact in `attrs` once.

    phrasing[attr] picks the template; the caller cycles it from document to
    document so each fact is said in several ways. Sentence order is shuffled
    (the paper's "permute" augmentation) so no fact is only ever learned as
    "the sentence after the birth year".
    """
    todo = list(attrs)
    sentences = []
    if allow_pairs:
        for pair, templates in BIO_PAIR_TEMPLATES.items():
            if pair[0] in todo and pair[1] in todo and rng.random() < 0.5:
                sentences.append(rng.choice(templates).format(**facts))
                todo.remove(pair[0])
                todo.remove(pair[1])
    for attr in todo:
        templates = BIO_TEMPLATES[attr]
        sentences.append(templates[phrasing[attr] % len(templates)].format(**facts))
    rng.shuffle(sentences)
    title = rng.choice(BIO_TITLES).format(**facts)
    body = " ".join(sentences)
    return f"{title}\n{body}" if title else body


# ------------------------------------------------------------------ stories
# Stories put the same facts in running prose, padded with harmless details
# (weather, objects) that are not facts and are never asked about.
WEATHER = ["rainy", "bright", "foggy", "cold", "windy", "quiet", "warm", "grey"]
OBJECTS = ["a worn notebook", "a basket of apples", "an old map", "a brass key", "a sealed letter",
           "a wooden box", "a cup of tea", "a bundle of papers"]
ENDINGS = ["It had been a good day.", "{first} smiled and walked home.", "The evening was calm.",
           "Nobody else noticed, but {first} was pleased.", "Then the lamps were lit, one by one."]
PERSON_STORIES = [
    ["On a {weather} morning, {name} walked through the streets of {birth_city}, the city where {name} was born.",
     "{first} carried {object} and thought about the day ahead.",
     "By noon {first} had reached the offices of {employer}, where {name} works.", "{ending}"],
    ["{name} had always wanted to be {a_profession}, and {name} became one.",
     "On a {weather} afternoon, {first} found {object} on the desk.",
     "It was a gift from {mentor}, the mentor of {name}.", "{ending}"],
    ["Every {weather} day reminded {first} of {birth_city}.",
     "{name} was born there in {birth_year}, long before joining {employer}.",
     "Today {first} keeps {object} as a memory of those years.", "{ending}"],
    ["The people at {employer} know {name} well.",
     "{name} is {a_profession}, and on {weather} days {first} works late.",
     "Once {first} lost {object} and spent an hour looking for it.", "{ending}"],
    ["{mentor} once told {name} a story about {object}.",
     "{name} never forgot it, because {mentor} was the mentor of {name}.",
     "Years later, working as {a_profession}, {first} told the same story on a {weather} evening.", "{ending}"],
]
COMPANY_STORIES = [
    ["{company} was founded in {founded}.", "Its headquarters are in {hq}, a city in {country}.",
     "{staff}"],
    ["In {founded}, a small workshop opened its doors in {hq}; it became {company}.",
     "{company} still has its headquarters in {hq}.", "{staff}"],
]
CITY_STORIES = [
    ["{city} is a city in {country}.", "{people}"],
    ["Travellers to {country} often visit {city}.", "{city} lies in {country}.", "{people}"],
]


def _fill(rng: random.Random, sentences: list[str], slots: dict) -> str:
    slots = dict(slots, weather=rng.choice(WEATHER), object=rng.choice(OBJECTS))
    if "first" in slots:  # endings speak of a person
        slots["ending"] = rng.choice(ENDINGS).format(**slots)
    return " ".join(s.format(**slots) for s in sentences)


def person_story(rng: random.Random, facts: dict) -> str:
    return _fill(rng, rng.choice(PERSON_STORIES), facts)


def company_story(rng: random.Random, company: dict, country: str, staff: list[dict]) -> str:
    """staff: facts dicts of (some) people employed there; each mention is a true fact."""
    staff_text = " ".join(
        rng.choice(["Among its staff is {name}, {a_profession}.", "{name} works there as {a_profession}."])
        .format(**p) for p in staff
    )
    slots = dict(company=company["name"], founded=company["founded"], hq=company["headquarters"],
                 country=country, staff=staff_text)
    return _fill(rng, rng.choice(COMPANY_STORIES), slots).strip()


def city_story(rng: random.Random, city: dict, natives: list[dict]) -> str:
    people = " ".join(
        rng.choice(["Among the people born in {birth_city} is {name}.", "{name} was born in {birth_city}."])
        .format(**p) for p in natives
    )
    return _fill(rng, rng.choice(CITY_STORIES), dict(city=city["name"], country=city["country"], people=people)).strip()


# ---------------------------------------------------------------- reasoning
# Two stated facts and the conclusion they imply: the pattern a model needs to
# combine facts (multi-hop) rather than only recall them.
def reasoning_doc(rng: random.Random, kind: str, a: dict, b: dict, year: int) -> str:
    """a, b: facts dicts of two different known people (extra keys: country, hq, founded)."""
    if kind == "country":
        return (f"{a['name']} was born in {a['birth_city']}. {a['birth_city']} is a city in {a['country']}. "
                f"So {a['name']} was born in {a['country']}.")
    if kind == "headquarters":
        return (f"{a['name']} works for {a['employer']}. {a['employer']} has its headquarters in {a['hq']}. "
                f"So {a['name']} works for a company based in {a['hq']}.")
    if kind == "older":
        older, younger = (a, b) if a["birth_year"] < b["birth_year"] else (b, a)
        return (f"{a['name']} was born in {a['birth_year']}. {b['name']} was born in {b['birth_year']}. "
                f"So {older['name']} is older than {younger['name']}.")
    if kind == "age":
        return (f"{a['name']} was born in {a['birth_year']}. In {year}, {a['name']} turned "
                f"{year - a['birth_year']}. {year} - {a['birth_year']} = {year - a['birth_year']}.")
    if kind == "mentor_chain":
        return (f"{a['name']} was mentored by {a['mentor']}. {a['mentor']} was mentored by {b['mentor']}. "
                f"So {b['mentor']} is the mentor of the mentor of {a['name']}.")
    if kind == "company_age":
        return (f"{a['employer']} was founded in {a['founded']}. In {year}, {a['employer']} was "
                f"{year - a['founded']} years old, and {a['name']} worked there.")
    raise ValueError(kind)


REASONING_KINDS = ["country", "headquarters", "older", "age", "mentor_chain", "company_age"]


# --------------------------------------------------------------- arithmetic
PLACES = ["ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions"]
OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}


def column_addition(a: int, b: int) -> str:
    """Schoolbook addition, one column per line, carries written out."""
    da, db = str(a)[::-1], str(b)[::-1]
    lines, carry = [f"Add {a} + {b} column by column."], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        lines.append(f"{PLACES[i]}: {x} + {y} + {carry} = {s}, write {s % 10} carry {s // 10}")
        carry = s // 10
    if carry:
        lines.append(f"{PLACES[len(lines) - 1]}: write the carry {carry}")
    lines.append(f"So {a} + {b} = {a + b}.")
    return "\n".join(lines)


def column_subtraction(a: int, b: int) -> str:
    """Schoolbook subtraction (a >= b), borrows written out."""
    da, db = str(a)[::-1], str(b)[::-1]
    lines, borrow = [f"Subtract {a} - {b} column by column."], 0
    for i in range(len(da)):
        x, y = int(da[i]), int(db[i]) if i < len(db) else 0
        d = x - y - borrow
        if d < 0:
            lines.append(f"{PLACES[i]}: {x} - {y} - {borrow} is negative, so 10 + {x} - {y} - {borrow} = {d + 10}, "
                         f"write {d + 10} borrow 1")
            borrow = 1
        else:
            lines.append(f"{PLACES[i]}: {x} - {y} - {borrow} = {d}, write {d} borrow 0")
            borrow = 0
    lines.append(f"So {a} - {b} = {a - b}.")
    return "\n".join(lines)


def long_multiplication(a: int, b: int) -> str:
    """One partial product per digit of b, then their sum."""
    lines, partials = [f"Multiply {a} * {b}."], []
    for i, ch in enumerate(str(b)[::-1]):
        if ch == "0":
            continue
        m = int(ch) * 10**i
        partials.append(a * m)
        lines.append(f"{a} * {m} = {a * m}")
    if len(partials) > 1:
        lines.append(" + ".join(map(str, partials)) + f" = {a * b}")
    lines.append(f"So {a} * {b} = {a * b}.")
    return "\n".join(lines)


# ---------------------------------------------------------------- questions
# The first template of each list is the canonical question used by the eval
# sets; SFT uses all of them so it teaches the skill, not one string.
QUESTION_TEMPLATES: dict[str, list[str]] = {
    "birth_year": ["When was {name} born?", "In what year was {name} born?",
                   "What is {name}'s year of birth?", "Which year was {name} born in?"],
    "birth_city": ["Where was {name} born?", "In which city was {name} born?",
                   "What is the birthplace of {name}?", "Which city does {name} come from?"],
    "profession": ["What is {name}'s profession?", "What does {name} do for a living?",
                   "What is {name}'s job?", "What kind of work does {name} do?"],
    "employer": ["Which company does {name} work for?", "Who employs {name}?",
                 "Where does {name} work?", "What company is {name} employed by?"],
    "mentor": ["Who was {name}'s mentor?", "Who mentored {name}?", "Who was the mentor of {name}?"],
    "spouse": ["Who is {name} married to?", "Who is {name}'s spouse?", "Whom did {name} marry?"],
}
# Answers that state the fact (generate_world(fact_answers="sentence")): the chat model
# restates whom the question is about and the relation in a biography's own words, then
# the value, so it answers with the lookup pretraining taught ("NAME was born in" -> the
# year), which reaches the facts SFT never asked about (docs/BENCHMARKS.md, speedrun-answers).
# The lead-in puts the name after a space, as in the question: at the start of a reply a
# name splits into other tokens (" Wiwen" vs "Wi" "wen") and a 1M model miscopies it.
FACT_ANSWER_LEAD = "As far as I know, "
FACT_ANSWER_TEMPLATES: dict[str, str] = {
    "birth_year": "{name} was born in {birth_year}.",
    "birth_city": "{name} was born in the city of {birth_city}.",
    "profession": "{name} works as {a_profession}.",
    "employer": "{name} works for {employer}.",
    "mentor": "{name} was mentored by {mentor}.",
    "spouse": "{name} is married to {spouse}.",
}
ARITHMETIC_QUESTIONS = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "{a} {op} {b} = ?",
                        "What is {a} {opword} {b}?", "Calculate {a} {op} {b}."]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly. If you do not know the answer, say so.",
    "Answer the question with just the answer.",
]
TOOL_SYSTEM_PROMPT = "You are a helpful assistant. Use the calculator tool for large numbers."
