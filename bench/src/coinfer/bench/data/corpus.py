"""Deterministic short-message corpus with real zero-shot topic classifier results.

The text filtering workloads (InFi) need a stream of short English messages (chat
messages, news headlines, alerts; 5-30 words) over a known set of topics, the results of
a heavy text model on every message, and the truth the messages were generated from.
Messages are composed from templates and word lists over eight topics (``TOPICS``):
named entities (teams, players, companies, streets, dishes, officials), numbers (scores,
temperatures, prices, delays), three styles (``headline``, ``chat``, ``alert``), plus
off-topic chatter and mixed messages that join two topics, so the classifier's confidence
varies. A small share of words carry a typo (swapped, dropped, doubled or mistyped letter).
The heavy model is :class:`coinfer.bench.models.topics.TopicClassifier` (MiniLM-L6, zero-shot).

Everything derives from the seed: message ``i`` draws from its own PCG64 stream, so it is
the same whether 10 or 10,000 messages are generated.

Output format (version 1), written atomically (a staging directory renamed at the end)::

    DIR/corpus.json     {"format": "coinfer-corpus", "version": 1, "seed", "messages" (count),
                         "options": {"mixed", "chatter", "typo_rate"} (shares of messages, typo
                         probability per word), "topics": [...] (generative topics),
                         "classifier": {"model": "all-MiniLM-L6-v2", "labels": [...] (order of
                         every probability vector), "prompts": {topic: [...]}, "temperature",
                         "max_length", "batch_size"},
                         "metrics": {accuracy and confidence distribution, see
                         classifier_metrics}, "files": {"messages.jsonl": sha256 hex}}
    DIR/messages.jsonl  one JSON object per line, in id order:
        "id"        int, 0..N-1
        "text"      the message
        "truth"     {"kind": "topical" | "mixed" | "chatter", "topic": the (main) topic or
                     null for chatter, "secondary": the other topic of a mixed message or
                     null, "ambiguous": kind != "topical", "style": "headline" | "chat" |
                     "alert", "words": word count, "typos": number of words with a typo}
        "result"    {"label": most probable classifier label, "confidence": its
                     probability, "probabilities": [one per classifier label]} (6 decimals)
        "token_ids" the MiniLM token ids the classifier saw ([CLS] ... [SEP], no padding)

:meth:`Corpus.load` checks the format, version and sha256 and gives numpy views of the
results; :func:`generate_messages` alone produces the texts and truth without a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coinfer.bench.models.topics import TopicClassifier
from coinfer.sdk.datadir import read_index
from coinfer.sdk.errors import CoinferError
from coinfer.sdk.fsutil import atomic_directory, atomic_write_json

FORMAT = "coinfer-corpus"
VERSION = 1
INDEX_FILE = "corpus.json"
MESSAGES_FILE = "messages.jsonl"
MODEL_NAME = "all-MiniLM-L6-v2"

TOPICS = ("sports", "weather", "traffic", "finance", "technology", "health", "food", "local")
KINDS = ("topical", "mixed", "chatter")
STYLES = ("headline", "chat", "alert")
STYLE_SHARES = (0.4, 0.35, 0.25)
MIN_WORDS, MAX_WORDS = 5, 30
MAX_DRAWS = 50  # redraws of a message's text until its length is within bounds

# ---------------------------------------------------------------------------------------
# Word lists.

FIRST_NAMES = ("Maria", "James", "Aisha", "Tom", "Priya", "Lukas", "Sofia", "Daniel", "Mei", "Omar",
               "Elena", "Jack", "Nadia", "Carlos", "Hannah", "Kenji", "Laura", "Sam", "Fatima", "Leo")
LAST_NAMES = ("Okafor", "Lindqvist", "Romero", "Chen", "Patel", "Novak", "Brennan", "Haddad", "Moreau",
              "Kowalski", "Tanaka", "Fischer", "Adeyemi", "Silva", "Whitfield", "Petrov", "Hughes",
              "Nakamura", "Duarte", "Galloway")
CITIES = ("Riverton", "Northgate", "Eastbrook", "Millford", "Harbor City", "Lakeside", "Westfield",
          "Pine Hollow", "Stonebridge", "Redwood Falls", "Ashford", "Kingsport")
MASCOTS = ("Hawks", "United", "Rovers", "Tigers", "Comets", "Wolves", "Mariners", "Rangers", "Falcons",
           "Athletic")
SPORTS = ("football", "basketball", "baseball", "hockey", "tennis", "cricket", "rugby", "volleyball")
COMPETITIONS = ("league", "cup final", "playoffs", "semifinal", "championship", "derby", "tournament")
POSITIONS = ("striker", "goalkeeper", "point guard", "pitcher", "captain", "midfielder", "winger")
STREET_NAMES = ("Elm", "Oak", "Station", "Market", "King", "Harbour", "Mill", "Church", "Maple", "Bridge",
                "Victoria", "Cedar")
STREET_KINDS = ("Street", "Road", "Avenue", "Lane", "Boulevard")
ROAD_KINDS = ("Route", "Highway", "Interstate", "the A")
DAYS = ("today", "tomorrow", "tonight", "this weekend", "on Monday", "on Tuesday", "on Wednesday",
        "on Thursday", "on Friday", "on Saturday", "on Sunday", "this afternoon", "later this week")
DIRECTIONS = ("north", "south", "east", "west", "northwest", "southeast")
STORMS = ("Alma", "Bruno", "Celia", "Dorian", "Freya", "Gustav", "Helga", "Ivo")
RIVERS = ("Avon", "Silver", "Black", "Wye", "Lark", "Tamar")
TECH_COMPANIES = ("Altima Systems", "Brightwave", "Quantix", "Helio Labs", "Corvex Software", "Nimbus Cloud",
                  "Pixelforge", "Datacore")
FINANCE_COMPANIES = ("Vantage Bank", "Meridian Motors", "Crestline Energy", "Harbor Retail",
                     "Summit Insurance", "Granite Steel", "Bluewater Shipping", "Northstar Airlines")
GADGETS = ("smartphone", "tablet", "smartwatch", "laptop", "VR headset", "wireless earbuds", "e-reader",
           "gaming console")
APPS = ("ChatterBox", "PhotoSnap", "RideNow", "StreamFlix", "NoteNest", "WalletGo",
        "MapMate")
SYSTEMS = ("Android", "iOS", "Windows", "Linux", "macOS", "ChromeOS")
DISHES = ("ramen", "lasagna", "fish tacos", "mushroom risotto", "butter chicken", "pad thai",
          "beef stew", "falafel wraps", "apple pie", "pancakes", "sushi", "vegetable curry")
RESTAURANTS = ("Luigi's", "The Golden Spoon", "Saffron House", "Noodle Bar 88", "Casa Verde",
               "The Hungry Fox", "Blue Lotus", "Mama Rosa's")
INGREDIENTS = ("garlic", "fresh basil", "lemon", "ginger", "chili", "parmesan", "coconut milk",
               "smoked paprika", "honey", "mint")
HOSPITALS = ("St. Mary's Hospital", "Riverton General", "the Northgate Clinic", "Lakeside Medical Centre",
             "the children's hospital")
ILLNESSES = ("flu", "measles", "norovirus", "covid", "whooping cough", "chickenpox", "food poisoning")
SYMPTOMS = ("a fever", "a sore throat", "a bad cough", "a migraine", "back pain", "a runny nose")
OFFICIALS = ("Mayor", "Councillor", "Alderman", "Senator", "Commissioner")
FACILITIES = ("public library", "community pool", "youth centre", "fire station", "recreation centre",
              "town museum")

SLOTS: dict[str, Sequence[str] | Callable[[np.random.Generator], str]] = {
    "first": FIRST_NAMES,
    "last": LAST_NAMES,
    "person": lambda rng: f"{_pick(rng, FIRST_NAMES)} {_pick(rng, LAST_NAMES)}",
    "city": CITIES,
    "team": lambda rng: f"{_pick(rng, CITIES)} {_pick(rng, MASCOTS)}",
    "sport": SPORTS,
    "competition": COMPETITIONS,
    "position": POSITIONS,
    "score": lambda rng: f"{rng.integers(0, 6)}-{rng.integers(0, 5)}",
    "street": lambda rng: f"{_pick(rng, STREET_NAMES)} {_pick(rng, STREET_KINDS)}",
    "road": lambda rng: _road(rng),
    "day": DAYS,
    "direction": DIRECTIONS,
    "storm": STORMS,
    "river": RIVERS,
    "techco": TECH_COMPANIES,
    "finco": FINANCE_COMPANIES,
    "ticker": lambda rng: "".join(_pick(rng, LETTERS) for _ in range(int(rng.integers(3, 5)))),
    "gadget": GADGETS,
    "app": APPS,
    "os": SYSTEMS,
    "dish": DISHES,
    "restaurant": RESTAURANTS,
    "ingredient": INGREDIENTS,
    "hospital": HOSPITALS,
    "illness": ILLNESSES,
    "symptom": SYMPTOMS,
    "official": OFFICIALS,
    "facility": FACILITIES,
    "n": lambda rng: str(rng.integers(2, 60)),
    "big": lambda rng: str(rng.integers(100, 5000)),
    "minutes": lambda rng: str(5 * rng.integers(1, 19)),
    "temp": lambda rng: str(rng.integers(24, 43)),
    "cold": lambda rng: str(rng.integers(-18, 3)),
    "mm": lambda rng: str(5 * rng.integers(2, 21)),
    "kmh": lambda rng: str(10 * rng.integers(6, 15)),
    "pct": lambda rng: f"{rng.uniform(0.3, 14.0):.1f}",
    "rate": lambda rng: f"{rng.integers(1, 27) / 4:.2f}",
    "price": lambda rng: f"{rng.uniform(1.5, 950.0):.2f}",
    "time": lambda rng: f"{rng.integers(1, 13)}:{15 * rng.integers(0, 4):02d} {_pick(rng, ('am', 'pm'))}",
    "votes": lambda rng: f"{rng.integers(5, 10)}-{rng.integers(1, 5)}",
}

# Templates per topic and style. ``{slot}`` draws from SLOTS; ``{slot2}`` is a second,
# different draw of the same slot.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "sports": {
        "headline": (
            "{team} beat {team2} {score} in the {sport} {competition}",
            "{person} scores twice as {team} reach the {competition}",
            "Coach {last} says the {team} are ready for the derby {day}",
            "{team} sign {position} {person} on a {n}-million contract",
            "Late goal gives {team} a dramatic win over {team2}",
            "{person} wins the {city} open tennis title in straight sets",
            "Record crowd of {big} fans watches {team} lift the trophy",
        ),
        "chat": (
            "did anyone watch the {team} game last night? what a finish",
            "{team} lost again {score}, the defence was a disaster",
            "tickets for the {competition} against {team2} sold out in {minutes} minutes",
            "who's coming to five-a-side football {day}? we need two more players",
            "that penalty call in the {team} match was a joke, the referee was blind",
            "can't believe {person} missed an open goal in the final minute",
        ),
        "alert": (
            "Score update: {team} {score} {team2} at half time",
            "Match report: {team} climb to second in the {sport} league table",
            "Team news: {position} {person} is back in the squad {day}",
            "Final whistle: {team} win {score} and qualify for the {competition}",
            "Kick-off moved to {time} for the {team} versus {team2} game",
        ),
    },
    "weather": {
        "headline": (
            "Heavy rain expected in {city} {day}, up to {mm} mm in places",
            "Heatwave to push temperatures to {temp} degrees across the region",
            "Storm {storm} to bring gusts of {kmh} km/h to the coast {day}",
            "Forecast for {city}: sunny spells, highs of {temp} degrees and light winds",
            "First snow of the winter blankets {city} as temperatures drop to {cold}",
            "Flood warning for the river {river} after three days of rain",
            "Thunderstorms and hail likely over {city} this afternoon",
        ),
        "chat": (
            "so cold this morning, {cold} degrees and the wind is brutal",
            "is it going to snow {day}? my weather app says a {n}% chance",
            "bring an umbrella, it's pouring down here in {city}",
            "what a gorgeous sunny day, finally some blue sky and warm weather",
            "the forecast said dry but we just got soaked by a sudden shower",
            "it's so humid and hot today, {temp} degrees in the shade",
        ),
        "alert": (
            "Weather warning: strong winds from the {direction} up to {kmh} km/h {day}",
            "Heat advisory for {city} until {time}, temperatures near {temp} degrees",
            "Fog alert: dense fog and low clouds over {city} until mid-morning",
            "Frost warning {day}: overnight lows of {cold} degrees, protect your plants",
            "Severe weather alert: tornado watch in effect for {city} and nearby counties",
        ),
    },
    "traffic": {
        "headline": (
            "Crash on {road} near {city} causes delays of {minutes} minutes",
            "Lane closure on {road} northbound until {time} for roadworks",
            "Commuters face long queues as {road} is closed after a lorry fire",
            "The bridge on {street} reopens to cars after {n} weeks of repairs",
            "Train services between {city} and {city2} delayed by a signal fault",
            "New speed cameras installed on {road} to reduce accidents",
        ),
        "chat": (
            "stuck in traffic on {road} again, nothing is moving",
            "anyone know why the {road} exit is closed? been sitting here {minutes} minutes",
            "bus {n} never showed up, i'm going to be late for work",
            "avoid {street} if you're driving, huge jam because of a broken-down truck",
            "the traffic lights at the {street} junction are out, total chaos",
            "rush hour on {road} is the worst, {minutes} minutes to go two miles",
        ),
        "alert": (
            "Traffic alert: accident on {road} at exit {n}, two lanes blocked",
            "Congestion warning: heavy traffic at the {street} roundabout, use {street2} instead",
            "Road closure: {street} closed {day} for resurfacing, follow the diversion",
            "Transit update: bus route {n} diverted via {street} due to roadworks",
            "Delays of {minutes} minutes on {road} southbound after a collision",
        ),
    },
    "finance": {
        "headline": (
            "{finco} shares rise {pct}% after strong quarterly earnings",
            "Stocks fall as investors worry about interest rates; the index drops {pct}%",
            "Central bank holds interest rates at {rate}% as inflation cools",
            "{finco} to cut {big} jobs as profits slump",
            "Dollar weakens against the euro while oil climbs to {price} dollars a barrel",
            "{finco} reports revenue of {big} million, beating analyst forecasts",
        ),
        "chat": (
            "mortgage rates went up again, thinking about refinancing the house",
            "my savings account finally pays {rate}% interest, not bad",
            "should i sell my {finco} shares before the earnings report?",
            "bitcoin crashed {pct}% overnight, glad i sold last week",
            "just did my taxes, the refund is smaller than i expected",
            "anyone have tips for an index fund for my retirement savings?",
        ),
        "alert": (
            "Market alert: {ticker} down {pct}% in early trading",
            "Price alert: {finco} stock hits a {n}-week high at {price} dollars",
            "Earnings update: {finco} profit up {pct}%, dividend raised to {rate} per share",
            "Currency alert: the pound falls {pct}% against the dollar",
            "Bond yields jump to {rate}% after the inflation report",
        ),
    },
    "technology": {
        "headline": (
            "{techco} unveils a new {gadget} with a faster chip and longer battery life",
            "New {os} update fixes battery drain and Wi-Fi bugs",
            "Researchers release an open-source AI model that writes computer code",
            "Data breach at {techco} exposes {big} thousand user passwords",
            "{techco} launches a cloud computing service for software developers",
            "Engineers at {techco} build a quantum processor with {n} qubits",
        ),
        "chat": (
            "my laptop keeps crashing after the latest software update, any ideas?",
            "is the new {gadget} from {techco} worth it? the reviews love the screen",
            "my phone won't connect to the wifi since i installed {app}",
            "just built my own gaming PC, the graphics card was a pain to install",
            "does anyone know a good password manager for {os}?",
            "the new AI chatbot wrote my python script in seconds, kind of scary",
        ),
        "alert": (
            "Security alert: update your router firmware, a critical vulnerability is being exploited",
            "Service outage: {app} servers are down and users cannot log in",
            "Software update: version {n}.{n2} of {app} is available for {os}",
            "Phishing warning: fake emails pretending to be from {techco} ask for your password",
            "System notice: the {techco} cloud will be offline for maintenance {day}",
        ),
    },
    "health": {
        "headline": (
            "{illness} cases rising in {city}, doctors urge people to get vaccinated",
            "New study links {minutes} minutes of daily walking to lower blood pressure",
            "{hospital} opens a new cancer treatment wing",
            "Emergency room waiting times in {city} reach {n} hours",
            "Doctors warn that too little sleep raises the risk of heart disease",
            "Clinical trial shows new drug slows memory loss in patients",
        ),
        "chat": (
            "feeling awful with {symptom}, staying home from work today",
            "my back pain is getting worse, need to book a physio appointment",
            "just got my flu shot, arm is a bit sore but fine",
            "does anyone know a good dentist? my tooth has been aching for days",
            "started going to the gym three times a week, already sleeping better",
            "the doctor says my blood pressure is too high, need to cut down on salt",
        ),
        "alert": (
            "Health alert: {illness} outbreak reported at a school in {city}",
            "Public health notice: free vaccinations at {hospital} {day}",
            "Medical update: Dr. {last} recommends {n} minutes of exercise every day",
            "Pharmacy notice: free blood pressure checks on {street} this week",
            "Patient advisory: {hospital} restricts visitors due to {illness}",
        ),
    },
    "food": {
        "headline": (
            "New {dish} restaurant opens on {street} with a tasting menu",
            "Chef {person} wins an award for the best {dish} in {city}",
            "Food festival returns to {city} with {n} stalls and live cooking shows",
            "How to bake sourdough bread at home in {n} easy steps",
            "{restaurant} named the best place for brunch in {city}",
            "Recipe of the day: {dish} with {ingredient} and {ingredient2}",
        ),
        "chat": (
            "who wants pizza tonight? i'm ordering from {restaurant}",
            "the {dish} at {restaurant} was amazing, you have to try the dessert",
            "what should i cook for dinner? i have rice, eggs and some {ingredient}",
            "made {dish} from scratch today and it actually tasted good",
            "this cafe makes the best chocolate cake and coffee in town",
            "craving {dish} so badly right now, anyone up for lunch?",
        ),
        "alert": (
            "Menu update: {restaurant} adds vegan {dish} and fresh salads",
            "Farmers market {day}: fresh strawberries, bread, honey and local cheese",
            "Kitchen tip: add {ingredient} at the end to keep the flavour fresh",
            "Restaurant review: generous portions of {dish} at {restaurant}",
            "Cooking class {day}: learn to make {dish} with chef {last}",
        ),
    },
    "local": {
        "headline": (
            "City council votes {votes} to approve the new park budget",
            "{official} {last} announces plans for affordable housing in {city}",
            "Residents protest against the closure of the {city} {facility}",
            "School board debates a {n} million budget for new classrooms",
            "{official} {last} resigns after a dispute over zoning rules",
            "Voter turnout reaches {n}% in the {city} municipal election",
        ),
        "chat": (
            "the mayor's speech at the town hall last night was so boring",
            "did you vote in the local election? polls close at {time}",
            "they're finally fixing the potholes, the council listened for once",
            "signed the petition to save the {facility}, you should too",
            "the new councillor actually answered my email about the playground",
            "so many campaign signs for {official} {last} around the neighbourhood",
        ),
        "alert": (
            "Election notice: polling stations open at {time}, bring photo ID",
            "Council update: public consultation on the {street} redevelopment plan",
            "Town hall meeting {day} about the new recycling program",
            "Community notice: the {facility} reopens after renovation {day}",
            "Public hearing {day} on the proposed city budget and property taxes",
        ),
    },
}

# Messages that are about two topics at once: the main topic first, then the other.
CROSS_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "sports": (
        ("weather", "{team} match against {team2} postponed because of heavy rain and strong winds"),
        ("health", "{position} {person} ruled out of the {competition} after knee surgery"),
        ("finance", "{team} sold to investors for {big} million dollars"),
    ),
    "weather": (
        ("traffic", "Snow and ice cause long delays on {road}, drive carefully"),
        ("health", "Heatwave warning: drink plenty of water and check on elderly neighbours"),
        ("food", "Hail storm destroys strawberry crops, farmers market cancelled {day}"),
    ),
    "traffic": (
        ("sports", "Expect heavy traffic on {road} around the stadium before the {team} game"),
        ("local", "Roadworks on {street} approved by the council, closures start {day}"),
        ("weather", "Flooded underpass closes {street} to traffic after the storm"),
    ),
    "finance": (
        ("technology", "{techco} shares jump {pct}% after the launch of its new AI chip"),
        ("food", "Food prices rose {pct}% this year as the cost of wheat and coffee climbs"),
        ("local", "City sells {n} million in bonds to pay for the new library"),
    ),
    "technology": (
        ("health", "New smartwatch app detects an irregular heartbeat and alerts your doctor"),
        ("finance", "Bank app outage: customers of {finco} cannot make payments online"),
        ("traffic", "New navigation app predicts traffic jams on {road} before they happen"),
    ),
    "health": (
        ("food", "Nutritionists say eating more vegetables and less sugar lowers the risk of diabetes"),
        ("sports", "Marathon runners treated for exhaustion at {hospital} after the race"),
        ("weather", "Pollen count very high {day}, allergy sufferers should take precautions"),
    ),
    "food": (
        ("health", "Recall: {dish} sold at {restaurant} linked to food poisoning cases"),
        ("finance", "Coffee shop chain raises prices by {pct}% as bean costs soar"),
        ("local", "Council approves a new street food market on {street}"),
    ),
    "local": (
        ("traffic", "Council approves a new bus lane on {street} to cut congestion"),
        ("finance", "{official} {last} proposes a {pct}% property tax increase to balance the budget"),
        ("sports", "Mayor opens the new {city} sports ground with a charity football match"),
    ),
}
JOINERS = ("{a}, and {b}", "{a}; meanwhile {b}", "{a}. Also, {b}", "{a} - {b}", "{a}. In other news, {b}")

CHATTER = (
    "hey, are we still meeting at {time}?",
    "ok sounds good, see you later then",
    "haha that's hilarious, send me the video",
    "thanks for yesterday, had a really great time",
    "can you call me when you're free?",
    "happy birthday {first}! hope you have a great day",
    "i'll be there in {minutes} minutes, save me a seat",
    "did you see my message from this morning?",
    "good morning everyone, hope you all slept well",
    "not sure yet, let me check and get back to you",
    "where did you put the keys? i can't find them anywhere",
    "miss you all, let's catch up soon",
    "can someone feed the cat while i'm away {day}?",
    "that movie last night was so long, i fell asleep halfway",
    "just landed, will text you when i get home",
    "{first} says hi and asks if you got the package",
)
CHAT_PREFIXES = ("omg", "btw", "fyi", "ugh,", "wow,", "honestly", "heads up:", "guys,")
CHAT_SUFFIXES = ("lol", "!!", "haha", "smh", ":(", ":)")
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _pick(rng: np.random.Generator, choices: Sequence[str]) -> str:
    return choices[int(rng.integers(len(choices)))]


def _road(rng: np.random.Generator) -> str:
    kind = _pick(rng, ROAD_KINDS)
    number = int(rng.integers(1, 99))
    return f"the A{number}" if kind == "the A" else f"{kind} {number}"


def _fill(rng: np.random.Generator, template: str) -> str:
    """Substitute every ``{slot}``; numbered repeats of a slot get distinct values."""
    drawn: dict[str, tuple[str, str]] = {}  # placeholder -> (slot, value)

    def draw(match: re.Match[str]) -> str:
        key, slot = match.group(0), match.group(1)
        if key not in drawn:
            source = SLOTS[slot]
            taken = {value for other, value in drawn.values() if other == slot}
            value = ""
            for _ in range(8):
                value = source(rng) if callable(source) else _pick(rng, source)
                if value not in taken:
                    break
            drawn[key] = (slot, value)
        return drawn[key][1]

    return re.sub(r"\{([a-z]+)\d*\}", draw, template)


def _typo(rng: np.random.Generator, word: str) -> str:
    """One keyboard slip inside ``word``: swap, drop, double or a neighbouring key."""
    position = int(rng.integers(1, len(word) - 1))
    slip = int(rng.integers(4))
    if slip == 0:
        return word[:position] + word[position + 1] + word[position] + word[position + 2:]
    if slip == 1:
        return word[:position] + word[position + 1:]
    if slip == 2:
        return word[:position] + word[position] + word[position:]
    letter = word[position].lower()
    row = next((r for r in KEYBOARD_ROWS if letter in r), None)
    if row is None:
        return word
    column = row.index(letter)
    neighbours = [row[c] for c in (column - 1, column + 1) if 0 <= c < len(row)]
    return word[:position] + _pick(rng, neighbours) + word[position + 1:]


def _add_typos(rng: np.random.Generator, text: str, rate: float) -> tuple[str, int]:
    words = text.split(" ")
    count = 0
    for k, word in enumerate(words):
        if len(word) >= 4 and word.isalpha() and rng.random() < rate:
            slipped = _typo(rng, word)
            if slipped != word:
                words[k], count = slipped, count + 1
    return " ".join(words), count


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------
# Messages.


@dataclass(frozen=True)
class CorpusOptions:
    """What to generate: ``mixed`` and ``chatter`` are the expected shares of two-topic and
    off-topic messages, ``typo_rate`` the probability that an eligible word has a typo."""

    messages: int = 1000
    seed: int = 0
    mixed: float = 0.15
    chatter: float = 0.1
    typo_rate: float = 0.02

    def __post_init__(self) -> None:
        errors = []
        for name, low, high in (("messages", 1, 10_000_000), ("seed", 0, 2**63 - 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                errors.append(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        for name in ("mixed", "chatter", "typo_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                errors.append(f"{name} must be in [0, 1], got {value!r}")
        if not errors and self.mixed + self.chatter > 1:
            errors.append(f"mixed + chatter must be at most 1, got {self.mixed} + {self.chatter}")
        if errors:
            raise CoinferError("invalid corpus options: " + "; ".join(errors))


@dataclass(frozen=True)
class Message:
    """One generated message and the truth it was generated from."""

    id: int
    text: str
    kind: str  # one of KINDS
    topic: str | None  # None for chatter
    secondary: str | None  # the other topic of a mixed message
    style: str  # one of STYLES
    typos: int

    @property
    def ambiguous(self) -> bool:
        return self.kind != "topical"

    @property
    def words(self) -> int:
        return len(self.text.split())

    def truth(self) -> dict[str, Any]:
        return {"kind": self.kind, "topic": self.topic, "secondary": self.secondary,
                "ambiguous": self.ambiguous, "style": self.style, "words": self.words, "typos": self.typos}


def message_rng(seed: int, index: int) -> np.random.Generator:
    """Message ``index``'s random stream, independent of every other message."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


def _styled(rng: np.random.Generator, text: str, style: str) -> str:
    """Chat messages get interjections and often no capitals; the others a capital letter."""
    if style != "chat":
        return _capitalise(text)
    if rng.random() < 0.15:
        text = f"{_pick(rng, CHAT_PREFIXES)} {text}"
    if rng.random() < 0.15:
        text = f"{text} {_pick(rng, CHAT_SUFFIXES)}"
    return text if rng.random() < 0.6 else _capitalise(text)


def _topical(rng: np.random.Generator, topic: str, style: str) -> str:
    return _fill(rng, _pick(rng, TEMPLATES[topic][style]))


def generate_message(options: CorpusOptions, index: int) -> Message:
    """Message ``index`` of the corpus that ``options`` describe."""
    rng = message_rng(options.seed, index)
    draw = rng.random()
    kind = "chatter" if draw < options.chatter else "mixed" if draw < options.chatter + options.mixed \
        else "topical"
    style = "chat" if kind == "chatter" else STYLES[int(rng.choice(len(STYLES), p=STYLE_SHARES))]
    topic = None if kind == "chatter" else _pick(rng, TOPICS)
    secondary = None
    crossed = kind == "mixed" and rng.random() < 0.5
    if crossed:
        assert topic is not None  # only a mixed message crosses, and it has a topic
        secondary, cross_template = CROSS_TEMPLATES[topic][int(rng.integers(len(CROSS_TEMPLATES[topic])))]
    elif kind == "mixed":
        secondary = _pick(rng, [t for t in TOPICS if t != topic])
    text = ""
    for _ in range(MAX_DRAWS):
        if topic is None:  # chatter
            text = _fill(rng, _pick(rng, CHATTER))
        elif crossed:
            text = _fill(rng, cross_template)
        elif secondary is not None:  # mixed: the second topic is drawn above
            first = _topical(rng, topic, style)
            template = _pick(rng, TEMPLATES[secondary][_pick(rng, STYLES)])
            second = _fill(rng, template)
            joined = _pick(rng, JOINERS)
            if not template.startswith("{"):  # a name stays capitalised
                second = second[:1].lower() + second[1:]
            text = joined.format(a=first, b=second)
        else:
            text = _topical(rng, topic, style)
        text = _styled(rng, text, style)
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            break
    else:
        raise CoinferError(f"message {index}: no draw of {MAX_DRAWS} had {MIN_WORDS}-{MAX_WORDS} words")
    text, typos = _add_typos(rng, text, options.typo_rate)
    return Message(index, text, kind, topic, secondary, style, typos)


def generate_messages(options: CorpusOptions) -> list[Message]:
    """All messages of the corpus, without running a model."""
    return [generate_message(options, index) for index in range(options.messages)]


# ---------------------------------------------------------------------------------------
# Classifier results and the corpus on disk.


def classifier_metrics(messages: Sequence[Message], labels: Sequence[str],
                       probabilities: np.ndarray) -> dict[str, Any]:
    """Accuracy against the generative truth and the spread of the classifier's confidence.

    ``accuracy_topical`` counts unambiguous messages; a mixed message is right when the
    label is either of its topics; chatter has no right label and only its confidence counts.
    """
    probabilities = np.asarray(probabilities, np.float64)
    predicted = [labels[k] for k in np.argmax(probabilities, axis=1)]
    confidence = probabilities.max(axis=1)
    kinds = np.array([m.kind for m in messages])
    pairs = list(zip(predicted, messages, strict=True))
    topical = [p == m.topic for p, m in pairs if m.kind == "topical"]
    mixed = [p in (m.topic, m.secondary) for p, m in pairs if m.kind == "mixed"]
    main_topic = [p == m.topic for p, m in pairs if m.topic is not None]

    def mean(values: Sequence[bool] | np.ndarray) -> float | None:
        return round(float(np.mean(values)), 4) if len(values) else None

    quantiles = np.quantile(confidence, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "accuracy_topical": mean(topical),
        "accuracy_mixed_either": mean(mixed),
        "accuracy_main_topic": mean(main_topic),
        "confidence_mean": mean(confidence),
        "confidence_quantiles": {f"p{q}": round(float(v), 4)
                                 for q, v in zip((10, 25, 50, 75, 90), quantiles, strict=True)},
        "confidence_below_0.5": mean(confidence < 0.5),
        "confidence_mean_by_kind": {kind: mean(confidence[kinds == kind]) for kind in KINDS},
        "accuracy_by_topic": {
            topic: mean([p == topic for p, m in pairs if m.kind == "topical" and m.topic == topic])
            for topic in TOPICS},
    }


def generate_corpus(out_dir: str | os.PathLike, options: CorpusOptions, *,
                    classifier: TopicClassifier | None = None, progress: bool = True,
                    overwrite: bool = False) -> Corpus:
    """Generate the messages, classify them and write the corpus into ``out_dir`` (atomically)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CoinferError(f"{out_dir} already exists; choose another --out or pass --overwrite")
    messages = generate_messages(options)
    classifier = classifier or TopicClassifier()
    batch = classifier.options.batch_size
    probabilities, token_ids = [], []
    with tqdm(total=len(messages), unit="msg", disable=not progress, desc="corpus") as bar:
        for start in range(0, len(messages), batch):
            predictions = classifier.classify([m.text for m in messages[start:start + batch]])
            probabilities.append(predictions.probabilities)
            token_ids.extend(predictions.token_ids)
            bar.update(len(predictions))
    stacked = np.round(np.concatenate(probabilities).astype(np.float64), 6)
    lines = []
    for message, row, ids in zip(messages, stacked, token_ids, strict=True):
        best = int(np.argmax(row))
        lines.append(json.dumps({
            "id": message.id, "text": message.text, "truth": message.truth(),
            "result": {"label": classifier.labels[best], "confidence": float(row[best]),
                       "probabilities": [float(p) for p in row]},
            "token_ids": [int(i) for i in ids],
        }, ensure_ascii=False))
    data = ("\n".join(lines) + "\n").encode("utf-8")
    index = {
        "format": FORMAT, "version": VERSION, "seed": options.seed, "messages": options.messages,
        "options": {"mixed": options.mixed, "chatter": options.chatter, "typo_rate": options.typo_rate},
        "topics": list(TOPICS),
        "classifier": {"model": MODEL_NAME, "labels": list(classifier.labels),
                       "prompts": {topic: list(texts) for topic, texts in classifier.prompts.items()},
                       **asdict(classifier.options)},
        "metrics": classifier_metrics(messages, classifier.labels, stacked),
        "files": {MESSAGES_FILE: hashlib.sha256(data).hexdigest()},
    }
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        (staging / MESSAGES_FILE).write_bytes(data)
        atomic_write_json(staging / INDEX_FILE, index)
    return Corpus.load(out_dir)


class CorpusFormatError(CoinferError):
    """A corpus on disk is missing, tampered with, or of another format or version."""


class Corpus:
    """A generated corpus, verified on load (format, version, sha256, record fields)."""

    def __init__(self, root: Path, index: dict[str, Any], records: list[dict[str, Any]]) -> None:
        self.root = root
        self.index = index
        self.records = records
        self.labels: tuple[str, ...] = tuple(index["classifier"]["labels"])
        self.probabilities = np.array([r["result"]["probabilities"] for r in records], np.float32)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.records]

    @property
    def messages(self) -> list[Message]:
        """The records' generative truth as :class:`Message` objects."""
        return [Message(r["id"], r["text"], r["truth"]["kind"], r["truth"]["topic"], r["truth"]["secondary"],
                        r["truth"]["style"], r["truth"]["typos"]) for r in self.records]

    @property
    def label_index(self) -> np.ndarray:
        """int64 [N]: the classifier's label as an index into ``labels``."""
        return np.argmax(self.probabilities, axis=1).astype(np.int64)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    @property
    def token_ids(self) -> list[np.ndarray]:
        return [np.asarray(r["token_ids"], np.int64) for r in self.records]

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Corpus:
        root = Path(directory)
        index_path = root / INDEX_FILE
        index = read_index(index_path, FORMAT, VERSION, CorpusFormatError, "a corpus",
                           "generate one with `coinfer data corpus`")
        for key in ("messages", "classifier", "files"):
            if key not in index:
                raise CorpusFormatError(f"{index_path} has no {key!r} entry")
        path = root / MESSAGES_FILE
        if not path.is_file():
            raise CorpusFormatError(f"{path} is missing (listed in {INDEX_FILE})")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != index["files"].get(MESSAGES_FILE):
            raise CorpusFormatError(f"{path} does not match its sha256 in {INDEX_FILE}: "
                                    "the file was modified or truncated")
        records = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
        labels = index["classifier"].get("labels", [])
        for number, record in enumerate(records):
            if record.get("id") != number or not isinstance(record.get("text"), str) \
                    or len(record.get("result", {}).get("probabilities", [])) != len(labels) \
                    or "truth" not in record or "token_ids" not in record:
                raise CorpusFormatError(f"{path}: line {number + 1} is not a valid message record")
        if len(records) != index["messages"]:
            raise CorpusFormatError(f"{path} holds {len(records)} messages, {INDEX_FILE} says "
                                    f"{index['messages']}")
        return cls(root, index, records)


# ---------------------------------------------------------------------------------------
# Command line (``coinfer data corpus``).
