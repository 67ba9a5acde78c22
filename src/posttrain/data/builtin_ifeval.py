"""Built-in IFEval-style prompts, SFT examples and preference pairs, written by the project.

A row combines a short writing task ("Write a short note to a neighbour about a lost cat.") with
one or two verifiable constraints phrased as IFEval phrases them ("In your entire response, refrain
from the use of any commas."). The ground truth is the IFEval spec the ``ifeval`` verifier reads::

    {"messages": [{"role": "user", "content": "Write a short note ... Answer with less than 60 words."}],
     "ground_truth": '{"instruction_id_list": ["length_constraints:number_words"],
                       "kwargs": [{"num_words": 60, "relation": "less than"}]}',
     "verifier": "ifeval", "task": "ifeval_builtin"}

The constraint types are ones a 135M model can satisfy some of the time (lower case, no commas,
word and sentence counts, an end phrase, keywords, a ``<<title>>``, a postscript, bullets,
highlights, placeholders, ``***`` paragraphs, quotation marks).

How rows are made:

- Tasks are split by position: every fourth task belongs to ``test``, the rest to ``train``, so the
  two splits never share a task and hence never share a prompt text. Prompts are unique within a
  call.
- Responses are templates: the task's own sentences (then generic filler sentences) are laid out to
  meet the constraints; the number of body sentences is searched until the project's strict
  ``ifeval`` verifier scores 1.0. A prompt is only emitted when such a response exists.
- A rejected response is built the same way but breaks exactly one constraint in a plausible way
  (a missing postscript, one bullet too many, a stray comma, capitals left in), so it scores
  (m - 1) / m under the strict verifier for m constraints.
- Everything is drawn from ``random.Random`` seeded by a string of (purpose, split, seed), so the
  same arguments give the same rows on every machine.

``generate_ifeval_prompts(n, seed, split)`` gives RLVR / evaluation prompts,
``ifeval_sft_examples(n, seed)`` gives ``{"messages": [user, assistant]}`` rows and
``ifeval_preference_pairs(n, seed, split)`` gives ``prompt`` / ``chosen`` / ``rejected`` rows.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field

from posttrain.rewards.ifeval import IFEvalVerifier

__all__ = ["generate_ifeval_prompts", "ifeval_sft_examples", "ifeval_preference_pairs", "TASKS"]


@dataclass(frozen=True)
class Task:
    prompt: str
    title: str
    words: tuple[str, ...]  # topical words that the sentences use (keywords / forbidden words)
    sentences: tuple[str, ...]  # no commas, so the "no comma" constraint is easy to meet


def _task(prompt, title, words, *sentences):
    return Task(prompt, title, tuple(words.split()), tuple(sentences))


# fmt: off
TASKS: tuple[Task, ...] = (
    _task("Write a short note to a neighbour about a lost cat.", "Have You Seen Our Cat", "cat garden neighbour",
          "Our grey cat Milo has been missing since Tuesday night.", "He often sleeps in the garden near the fence.",
          "If you see him please let us know at number twelve.", "Thank you for being such a kind neighbour."),
    _task("Describe your ideal weekend morning.", "A Slow Saturday", "coffee morning park",
          "My ideal morning starts with a quiet cup of coffee.", "I would read a book by the window for an hour.",
          "After that I would walk to the park with a friend.", "The whole morning would feel calm and unhurried."),
    _task("Explain why people should drink enough water.", "Why Water Matters", "water body energy",
          "Water keeps the body working in many small ways.", "It helps control body heat and carries food to the cells.",
          "Even mild thirst can lower your energy and focus.", "A glass of water with each meal is an easy habit."),
    _task("Write a thank-you message to a teacher.", "Thank You Teacher", "teacher class lessons",
          "Thank you for a wonderful year in your class.", "Your lessons made hard ideas feel simple.",
          "You were always patient when I asked questions.", "I will remember what you taught me for a long time."),
    _task("Give advice to someone starting to learn the guitar.", "First Steps on Guitar", "guitar practice chords",
          "Start with a few simple chords and learn them well.", "Practice for a short time every day instead of once a week.",
          "Your fingers will hurt at first but that passes.", "Play songs you love so that practice stays fun."),
    _task("Describe a rainy day in a small town.", "Rain on Main Street", "rain town street",
          "The rain began before dawn and never really stopped.", "Water ran down the main street in thin bright streams.",
          "People hurried between shops under dark umbrellas.", "By evening the whole town smelled of wet stone."),
    _task("Write a short product description for a reusable water bottle.", "The Everyday Bottle", "bottle steel water",
          "This bottle is made of strong steel that lasts for years.", "It keeps water cold for a full day.",
          "The lid seals tightly so nothing leaks in your bag.", "It is an easy way to use less plastic."),
    _task("Explain how to plant a tomato seedling.", "Planting a Tomato", "tomato soil sun",
          "Choose a spot that gets at least six hours of sun.", "Dig a hole deeper than the pot and loosen the soil.",
          "Set the tomato in the hole and bury part of the stem.", "Water it well and add a stake for support."),
    _task("Write a short story opening about a lighthouse keeper.", "The Last Keeper", "lighthouse keeper sea",
          "The keeper climbed the lighthouse stairs every night at dusk.", "Below him the sea threw itself against the rocks.",
          "No ship had passed in three weeks.", "Tonight a small light blinked back at him from the dark."),
    _task("Describe the benefits of riding a bicycle to work.", "Cycling to Work", "bicycle work traffic",
          "Riding a bicycle to work is good for your health.", "It saves money on fuel and parking.",
          "You often avoid the worst of the traffic.", "Many riders say they arrive at work in a better mood."),
    _task("Write an invitation to a birthday picnic.", "Join Our Picnic", "picnic birthday park",
          "You are invited to a birthday picnic in the park on Saturday.", "We will meet by the old oak tree at noon.",
          "Please bring a blanket and your favourite snack.", "We hope you can come and celebrate with us."),
    _task("Explain what a library offers besides books.", "More Than Books", "library computers events",
          "A library offers much more than books on shelves.", "Many have free computers and fast internet.",
          "They host events for children and adults alike.", "Some even lend tools and musical instruments."),
    _task("Give tips for a good night's sleep.", "Sleeping Well", "sleep bed screens",
          "Go to bed at the same time every night.", "Keep your bedroom dark and cool.",
          "Put screens away an hour before sleep.", "Avoid heavy meals late in the evening."),
    _task("Describe a visit to a busy market.", "Market Morning", "market fruit stalls",
          "The market was already loud when we arrived.", "Stalls were piled high with fruit and fresh bread.",
          "Sellers called out prices over the noise.", "We left with full bags and sore feet."),
    _task("Write a short review of a favourite book.", "A Book Worth Keeping", "book story characters",
          "This book tells a quiet story about two old friends.", "The characters feel real from the first page.",
          "The ending surprised me without feeling forced.", "I would recommend it to anyone who enjoys gentle stories."),
    _task("Explain why recycling is useful.", "Why Recycle", "recycling waste materials",
          "Recycling turns waste into new materials.", "It means fewer trees and less metal need to be taken from the earth.",
          "It also keeps rubbish out of landfills.", "Small habits at home add up over a whole town."),
    _task("Write a message apologising for missing a meeting.", "Sorry I Missed It", "meeting notes apology",
          "Please accept my apology for missing the meeting today.", "My train was delayed and my phone had no signal.",
          "I have read the notes and I agree with the plan.", "I will make sure to be there next week."),
    _task("Describe how to make a simple cup of tea.", "A Simple Cup of Tea", "tea water cup",
          "Boil fresh water in a kettle.", "Put a tea bag in your cup and pour the water over it.",
          "Let it steep for three to five minutes.", "Remove the bag and add milk if you like."),
    _task("Write a short speech welcoming new students.", "Welcome Students", "students school friends",
          "Welcome to our school and to the start of a new year.", "Every student here was new once too.",
          "Do not be afraid to ask for help or directions.", "We hope you make good friends and learn a great deal."),
    _task("Describe a walk in an autumn forest.", "Autumn Walk", "forest leaves path",
          "The forest path was covered in red and yellow leaves.", "Each step made a soft crunching sound.",
          "Cold air carried the smell of damp earth.", "We stopped on a bridge to watch the stream below."),
    _task("Explain how to save money on groceries.", "Smart Grocery Shopping", "groceries list budget",
          "Make a list before you shop and stick to it.", "Plan meals for the week around a simple budget.",
          "Buy store brands for basic groceries.", "Never shop for food when you are hungry."),
    _task("Write a short note to a friend who is moving away.", "Safe Travels Friend", "friend city letters",
          "I cannot believe you are moving to a new city.", "I will miss our long walks and late talks.",
          "Please send letters and photos when you settle in.", "You will always have a friend here."),
    _task("Describe what makes a good team leader.", "Leading a Team", "leader team trust",
          "A good leader listens before making decisions.", "They give the team clear goals and honest feedback.",
          "They share credit and take blame.", "Most of all they build trust over time."),
    _task("Explain why bees are important.", "Why We Need Bees", "bees flowers crops",
          "Bees carry pollen from flower to flower.", "Many crops depend on them to grow fruit.",
          "Without bees our food would cost much more.", "Planting flowers can help local bees thrive."),
    _task("Write a short poem about the sea.", "Song of the Sea", "sea waves shore",
          "The sea rolls in with silver waves.", "It hums a song along the shore.",
          "It takes the sand and brings it back.", "And calls the sailors home once more."),
    _task("Give advice for a first job interview.", "Acing the Interview", "interview company questions",
          "Learn about the company before the interview.", "Prepare short answers to common questions.",
          "Arrive ten minutes early and dress neatly.", "Ask one or two thoughtful questions at the end."),
    _task("Describe your favourite meal.", "My Favourite Meal", "soup bread meal",
          "My favourite meal is a bowl of hot vegetable soup.", "It comes with fresh bread still warm from the oven.",
          "The meal reminds me of winter evenings at home.", "It is simple but always makes me happy."),
    _task("Explain how a rainbow forms.", "How Rainbows Form", "rainbow light rain",
          "A rainbow forms when sunlight passes through rain drops.", "Each drop bends the light and splits it into colours.",
          "The light reflects inside the drop and comes back out.", "You see a rainbow when the sun is behind you."),
    _task("Write a short letter asking a landlord to fix a leak.", "Request for Repair", "leak kitchen repair",
          "I am writing about a leak under the kitchen sink.", "Water has been dripping onto the floor for three days.",
          "Could you arrange a repair this week please.", "Thank you for your help with this."),
    _task("Describe a train journey through the mountains.", "Through the Mountains", "train mountains valley",
          "The train climbed slowly into the mountains.", "Snow covered the peaks above the green valley.",
          "We passed tiny villages and dark tunnels.", "Everyone in the carriage stared out of the windows."),
    _task("Explain the rules of a simple card game.", "How to Play Snap", "cards game pile",
          "Each player gets an equal pile of cards face down.", "Players take turns to turn over their top card.",
          "When two cards match the first to shout snap wins the pile.", "The game ends when one player holds all the cards."),
    _task("Write a short motivational message for a runner before a race.", "You Are Ready", "race training finish",
          "You have trained for months for this race.", "Trust your legs and keep a steady pace.",
          "When it gets hard remember why you started.", "We will be waiting for you at the finish."),
    _task("Describe a quiet evening at home.", "A Quiet Evening", "evening lamp home",
          "The evening was quiet and the street outside was empty.", "A single lamp lit the corner of the room.",
          "I cooked a simple dinner and listened to the radio.", "It felt good to be home with nowhere to go."),
    _task("Explain why learning a second language is valuable.", "Learning a Second Language", "language culture travel",
          "Learning a new language opens doors to another culture.", "It makes travel easier and more fun.",
          "It can also help with work and study.", "Some studies suggest it keeps the mind sharp."),
    _task("Write a short note reminding a roommate to water the plants.", "Plant Reminder", "plants water roommate",
          "Please remember to water the plants while I am away.", "The big fern needs water every two days.",
          "The small cactus only needs a little once a week.", "Thank you for being a great roommate."),
    _task("Describe the sounds of a city at night.", "City Sounds at Night", "city night sirens",
          "The city never goes fully silent at night.", "Distant sirens rise and fade between the buildings.",
          "A late bus sighs at the corner stop.", "Somewhere a dog barks and then the quiet returns."),
    _task("Give tips for keeping a kitchen clean.", "A Clean Kitchen", "kitchen dishes counters",
          "Wash dishes right after each meal.", "Wipe the counters before you go to bed.",
          "Empty the bin before it gets full.", "A clean kitchen makes cooking much more pleasant."),
    _task("Write a short biography of a fictional inventor.", "The Inventor Ada Reed", "inventor machines workshop",
          "Ada Reed was born in a small fishing village.", "As a child she built machines from driftwood and wire.",
          "Later her workshop produced the first folding bicycle.", "She is remembered as a patient and curious inventor."),
    _task("Explain how to care for a pet rabbit.", "Caring for a Rabbit", "rabbit hay hutch",
          "A pet rabbit needs fresh hay every day.", "Give it a large hutch and time to run outside.",
          "Rabbits are social and enjoy gentle company.", "Take it to a vet once a year for a check up."),
    _task("Describe a snowy morning.", "Snow Morning", "snow morning children",
          "The morning light was soft and white.", "Fresh snow covered every roof and car.",
          "Children ran outside to build a snowman.", "The whole street felt calm and new."),
    _task("Write a short summary of why exercise matters.", "Why Exercise Matters", "exercise heart mood",
          "Regular exercise keeps the heart strong.", "It helps control weight and improves sleep.",
          "Exercise also lifts mood and reduces stress.", "Even a daily walk makes a real difference."),
    _task("Write a welcome message for a new member of a book club.", "Welcome to the Club", "club book meeting",
          "Welcome to our book club.", "We meet on the first Monday of each month.",
          "This month we are reading a short mystery novel.", "Bring your thoughts and a snack to share at the meeting."),
    _task("Describe how to pack for a weekend camping trip.", "Packing for Camping", "tent camping torch",
          "Start with a tent and a warm sleeping bag.", "Pack a torch with spare batteries.",
          "Bring simple food that is easy to cook.", "Check the weather before you leave for the camping trip."),
    _task("Explain why reading to children is important.", "Reading Together", "children reading words",
          "Reading aloud helps children learn new words.", "It builds a habit of reading that lasts for life.",
          "Stories also teach children about feelings.", "Most of all it is a warm time spent together."),
)
# fmt: on

FILLERS = (
    "I hope this is helpful.",
    "Small details often make the biggest difference.",
    "It is worth taking a moment to think about this.",
    "Many people feel the same way.",
    "There is always more to learn about it.",
    "Thank you for taking the time to read this.",
    "I am happy to share more if you wish.",
    "It does not need to be complicated.",
    "A little care goes a long way.",
    "Every day brings a new chance to try again.",
    "This is something I care about a great deal.",
    "The simplest plan is often the best one.",
)

END_PHRASES = ("Any other questions?", "Is there anything else I can help with?",
               "Let me know if you have additional questions.", "Hope this helps!", "That is all.")
PLACEHOLDER_SENTENCES = (  # with 1, 2 and 3 placeholders
    "Please sign it as [name].",
    "Please sign it as [name] and send it to [address].",
    "Please sign it as [name] and send it to [address] by [date].",
)


def _split_tasks(split: str) -> tuple[Task, ...]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return tuple(t for i, t in enumerate(TASKS) if (i % 4 == 3) == (split == "test"))


# --------------------------------------------------------------------------- constraints
# Each sampler returns (instruction_id, kwargs, phrase). Each planner turns kwargs into fields of a
# Plan (what the template writer must do); ``violate`` asks for one plausible way to break it.
# Word and sentence counts have no planner: the body length search meets (or breaks) them.


@dataclass
class Plan:
    lowercase: bool | None = None  # None: leave case alone; False: violate (keep capitals)
    no_comma: bool | None = None
    title: bool | None = None
    postscript: str | None = None
    postscript_violate: bool = False
    end_phrase: str | None = None
    end_violate: bool = False
    keywords: list[str] = field(default_factory=list)
    keywords_violate: bool = False
    keyword_freq: tuple[str, int] | None = None
    forbidden: list[str] = field(default_factory=list)
    forbidden_violate: bool = False
    bullets: int | None = None
    highlights: int | None = None
    placeholders: int | None = None
    paragraphs: int | None = None
    quotation: bool | None = None


def _s_lowercase(rng, task):
    phrase = "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed."
    return "change_case:english_lowercase", {}, phrase


def _p_lowercase(plan, kw, violate):
    plan.lowercase = not violate


def _s_no_comma(rng, task):
    phrase = rng.choice(("In your entire response, refrain from the use of any commas.",
                         "Do not include any commas in your response."))
    return "punctuation:no_comma", {}, phrase


def _p_no_comma(plan, kw, violate):
    plan.no_comma = not violate


def _s_words(rng, task):
    relation = rng.choice(("at least", "less than"))
    n = rng.choice((15, 20, 25, 30, 40) if relation == "at least" else (40, 50, 60, 80, 100))
    phrase = rng.choice(("Answer with {r} {n} words.", "Your response should contain {r} {n} words."))
    return "length_constraints:number_words", {"num_words": n, "relation": relation}, phrase.format(r=relation, n=n)


def _s_sentences(rng, task):
    relation = rng.choice(("at least", "less than"))
    n = rng.choice((2, 3, 4, 5) if relation == "at least" else (3, 4, 5, 6, 8))
    phrase = f"Your response should contain {relation} {n} sentences."
    return "length_constraints:number_sentences", {"num_sentences": n, "relation": relation}, phrase


def _s_end(rng, task):
    end = rng.choice(END_PHRASES)
    phrase = f"Finish your response with this exact phrase {end} No other words should follow this phrase."
    return "startend:end_checker", {"end_phrase": end}, phrase


def _p_end(plan, kw, violate):
    plan.end_phrase, plan.end_violate = kw["end_phrase"], violate


def _s_keywords(rng, task):
    keywords = sorted(rng.sample(task.words, 2))
    return "keywords:existence", {"keywords": keywords}, f"Include keywords {keywords} in the response."


def _p_keywords(plan, kw, violate):
    plan.keywords, plan.keywords_violate = list(kw["keywords"]), violate


def _s_frequency(rng, task):
    word, n = rng.choice(task.words), rng.choice((2, 3))
    phrase = f"In your response, the word {word} should appear at least {n} times."
    return "keywords:frequency", {"keyword": word, "frequency": n, "relation": "at least"}, phrase


def _p_frequency(plan, kw, violate):
    plan.keyword_freq = (kw["keyword"], kw["frequency"] - 1 if violate else kw["frequency"])


def _s_forbidden(rng, task):
    words = sorted(rng.sample(task.words, rng.choice((1, 2))))
    return "keywords:forbidden_words", {"forbidden_words": words}, f"Do not include keywords {words} in the response."


def _p_forbidden(plan, kw, violate):
    plan.forbidden, plan.forbidden_violate = list(kw["forbidden_words"]), violate


def _s_title(rng, task):
    phrase = "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."
    return "detectable_format:title", {}, phrase


def _p_title(plan, kw, violate):
    plan.title = not violate


def _s_postscript(rng, task):
    marker = rng.choice(("P.S.", "P.P.S"))
    phrase = f"At the end of your response, please explicitly add a postscript starting with {marker}"
    return "detectable_content:postscript", {"postscript_marker": marker}, phrase


def _p_postscript(plan, kw, violate):
    plan.postscript, plan.postscript_violate = kw["postscript_marker"], violate


def _s_bullets(rng, task):
    n = rng.choice((2, 3, 4))
    phrase = (f"Your answer must contain exactly {n} bullet points. Use the markdown bullet points such as:\n"
              "* This is point 1. \n* This is point 2")
    return "detectable_format:number_bullet_lists", {"num_bullets": n}, phrase


def _p_bullets(plan, kw, violate):
    plan.bullets = kw["num_bullets"] + (1 if violate else 0)


def _s_highlights(rng, task):
    n = rng.choice((1, 2, 3))
    phrase = f"Highlight at least {n} sections in your answer with markdown, i.e. *highlighted section*."
    return "detectable_format:number_highlighted_sections", {"num_highlights": n}, phrase


def _p_highlights(plan, kw, violate):
    plan.highlights = kw["num_highlights"] - (1 if violate else 0)


def _s_placeholders(rng, task):
    n = rng.choice((1, 2, 3))
    phrase = f"The response must contain at least {n} placeholders represented by square brackets, such as [address]."
    return "detectable_content:number_placeholders", {"num_placeholders": n}, phrase


def _p_placeholders(plan, kw, violate):
    plan.placeholders = kw["num_placeholders"] - (1 if violate else 0)


def _s_paragraphs(rng, task):
    n = rng.choice((2, 3))
    phrase = f"There should be {n} paragraphs. Paragraphs are separated with the markdown divider: ***"
    return "length_constraints:number_paragraphs", {"num_paragraphs": n}, phrase


def _p_paragraphs(plan, kw, violate):
    plan.paragraphs = kw["num_paragraphs"] + (1 if violate else 0)


def _s_quotation(rng, task):
    return "startend:quotation", {}, "Wrap your entire response with double quotation marks."


def _p_quotation(plan, kw, violate):
    plan.quotation = not violate


def _p_none(plan, kw, violate):
    """Counts (words, sentences) are met or broken by the body-length search, not by the plan."""


CONSTRAINTS = {  # instruction id -> (sampler, planner)
    "change_case:english_lowercase": (_s_lowercase, _p_lowercase),
    "punctuation:no_comma": (_s_no_comma, _p_no_comma),
    "length_constraints:number_words": (_s_words, _p_none),
    "length_constraints:number_sentences": (_s_sentences, _p_none),
    "startend:end_checker": (_s_end, _p_end),
    "keywords:existence": (_s_keywords, _p_keywords),
    "keywords:frequency": (_s_frequency, _p_frequency),
    "keywords:forbidden_words": (_s_forbidden, _p_forbidden),
    "detectable_format:title": (_s_title, _p_title),
    "detectable_content:postscript": (_s_postscript, _p_postscript),
    "detectable_format:number_bullet_lists": (_s_bullets, _p_bullets),
    "detectable_format:number_highlighted_sections": (_s_highlights, _p_highlights),
    "detectable_content:number_placeholders": (_s_placeholders, _p_placeholders),
    "length_constraints:number_paragraphs": (_s_paragraphs, _p_paragraphs),
    "startend:quotation": (_s_quotation, _p_quotation),
}
_CONFLICTS = {  # pairs never put in one prompt
    frozenset({"detectable_format:number_bullet_lists", "length_constraints:number_paragraphs"}),
    frozenset({"detectable_format:number_bullet_lists", "detectable_format:number_highlighted_sections"}),
    frozenset({"keywords:forbidden_words", "keywords:existence"}),
    frozenset({"keywords:forbidden_words", "keywords:frequency"}),
    frozenset({"keywords:existence", "keywords:frequency"}),
}


# --------------------------------------------------------------------------- template writer


def _mentions(text: str, word: str) -> bool:
    return re.search(r"\b" + re.escape(word) + r"\b", text, flags=re.IGNORECASE) is not None


def _render(task: Task, plan: Plan, k: int) -> str:
    """A response with ``k`` body sentences (task sentences first, then fillers) laid out as
    ``plan`` says."""
    pool = [s for s in task.sentences + FILLERS if not any(_mentions(s, w) for w in plan.forbidden)]
    if plan.keywords_violate:
        pool = [s for s in pool if not _mentions(s, plan.keywords[0])]
    if plan.keyword_freq is not None:
        pool = [s for s in pool if plan.keyword_freq[0].lower() not in s.lower()]
    body = pool[:k]
    if plan.no_comma is False and body:
        body[0] = "Well, " + body[0][0].lower() + body[0][1:]
    for i, word in enumerate(plan.keywords):
        if not (plan.keywords_violate and i == 0) and not any(word.lower() in s.lower() for s in body):
            body.append(f"This is also about the {word}.")
    if plan.keyword_freq is not None:
        word, times = plan.keyword_freq
        body += [f"A key word here is {word}.", f"I mention {word} on purpose.", f"Let me say {word} once more."][:times]
    if plan.forbidden_violate:
        body.append(f"I keep thinking about the {plan.forbidden[0]}.")
    if plan.placeholders:
        body.append(PLACEHOLDER_SENTENCES[plan.placeholders - 1])
    for i in range(min(plan.highlights or 0, len(body))):
        body[i] = f"*{body[i]}*"

    if plan.bullets is not None:
        text = "Here are the main points:\n" + "\n".join(f"* {s}" for s in body[: plan.bullets])
        if body[plan.bullets :]:
            text += "\n\n" + " ".join(body[plan.bullets :])
    elif plan.paragraphs is not None:
        n = plan.paragraphs
        chunks = [body[len(body) * i // n : len(body) * (i + 1) // n] for i in range(n)]
        text = "\n\n***\n\n".join(" ".join(c) for c in chunks)
    else:
        text = "\n\n".join(" ".join(body[i : i + 3]) for i in range(0, len(body), 3))

    if plan.title is not None:
        title = task.title if not any(_mentions(task.title, w) for w in plan.forbidden) else "A Short Answer"
        text = (f"<<{title}>>" if plan.title else title) + "\n\n" + text
    if plan.postscript is not None:
        marker = "Note:" if plan.postscript_violate else plan.postscript
        text += f"\n\n{marker} I can send more details if you need them."
    if plan.end_phrase is not None:
        text += "\n\n" + (plan.end_phrase + " Thanks again." if plan.end_violate else plan.end_phrase)
    if plan.lowercase:
        text = text.lower()
    if plan.no_comma:
        text = text.replace(",", "")
    if plan.quotation:
        text = f'"{text}"'
    return text


def _respond(task, ids, kwargs_list, spec, violate: int | None, prefer_k: int) -> tuple[str, int] | None:
    """``(response, k)`` whose strict verdicts are all True (``violate`` None) or all True except
    instruction ``violate``, with the body length ``k`` closest to ``prefer_k``; None when no body
    length gives that. Rejected responses start from the chosen one's length, so that a pair
    differs in the broken constraint rather than in length where possible."""
    plan = Plan()
    for i, (instruction_id, kw) in enumerate(zip(ids, kwargs_list)):
        CONSTRAINTS[instruction_id][1](plan, kw, violate == i)
    want = [i != violate for i in range(len(ids))]
    verifier = IFEvalVerifier()
    for k in sorted(range(1, len(task.sentences) + len(FILLERS) + 1), key=lambda k: (abs(k - prefer_k), k)):
        text = _render(task, plan, k)
        if verifier(text, spec).details["follow_instruction_list"] == want:
            return text, k
    return None


# --------------------------------------------------------------------------- rows


def _rows(n: int, seed: int, split: str, purpose: str, with_rejected: bool) -> list[dict]:
    """``n`` unique, satisfiable prompts with their chosen (and rejected) responses."""
    tasks = _split_tasks(split)
    rng = random.Random(f"posttrain/builtin_ifeval/{purpose}/{split}/{seed}")
    rows, seen, attempts = [], set(), 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise ValueError(f"could only build {len(rows)} of {n} unique {split} IFEval prompts")
        task = rng.choice(tasks)
        chosen_ids = rng.sample(sorted(CONSTRAINTS), rng.choice((1, 2)))
        if len(chosen_ids) == 2 and frozenset(chosen_ids) in _CONFLICTS:
            continue
        sampled = [CONSTRAINTS[i][0](rng, task) for i in chosen_ids]
        ids, kwargs_list = [s[0] for s in sampled], [s[1] for s in sampled]
        prompt = " ".join([task.prompt] + [s[2] for s in sampled])
        if prompt in seen:
            continue
        spec = {"instruction_id_list": ids, "kwargs": kwargs_list}
        chosen = _respond(task, ids, kwargs_list, spec, None, prefer_k=rng.choice((3, 4, 5)))
        if chosen is None:
            continue
        row = {"prompt": prompt, "spec": spec, "chosen": chosen[0]}
        if with_rejected:
            rejected = None
            for j in rng.sample(range(len(ids)), len(ids)):  # the constraint to break, in random order
                rejected = _respond(task, ids, kwargs_list, spec, j, prefer_k=chosen[1])
                if rejected is not None:
                    break
            if rejected is None:
                continue
            row["rejected"] = rejected[0]
        seen.add(prompt)
        rows.append(row)
    return rows


def generate_ifeval_prompts(n: int, seed: int, split: str = "train") -> list[dict]:
    """``n`` unique IFEval-style prompts (RLVR / eval rows) from the ``split`` task pool."""
    return [
        {
            "messages": [{"role": "user", "content": r["prompt"]}],
            "ground_truth": json.dumps(r["spec"]),
            "verifier": "ifeval",
            "task": "ifeval_builtin",
        }
        for r in _rows(n, seed, split, "prompts", with_rejected=False)
    ]


def ifeval_sft_examples(n: int, seed: int, split: str = "train") -> list[dict]:
    """``n`` SFT rows ``{"messages": [user, assistant]}``; the assistant turn meets every
    constraint (strict ``ifeval`` score 1.0)."""
    return [
        {"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}]}
        for r in _rows(n, seed, split, "sft", with_rejected=False)
    ]


def ifeval_preference_pairs(n: int, seed: int, split: str = "train") -> list[dict]:
    """``n`` preference rows: ``chosen`` meets every constraint, ``rejected`` breaks exactly one
    (strict scores 1.0 and (m - 1) / m)."""
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
            "ground_truth": json.dumps(r["spec"]),
            "verifier": "ifeval",
            "subset": "ifeval",
        }
        for r in _rows(n, seed, split, "preference", with_rejected=True)
    ]
