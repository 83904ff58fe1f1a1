"""Local text generation for the demo story jobs.

A small grammar turns a prompt into a story world (hero, companion, setting, goal), a
second-order Markov chain trained on sentences from that grammar supplies varied prose, and
best-of-N sampling keeps the candidate sentences that score best. Everything is seeded from
the prompt and a seed, so equal inputs give equal stories on every machine.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field

# The grammar's vocabulary. Templates fill {hero}, {companion}, {setting} and the other
# slots from these lists; a capitalised slot name gives the value with a capital letter.
# fmt: off
NAMES = ["Ada", "Bram", "Cleo", "Dario", "Esme", "Farid", "Greta", "Hugo", "Ines", "Jun", "Kira"]
TRAITS = ["curious", "stubborn", "gentle", "restless", "clever", "shy", "brave", "absent-minded"]
ROLES = [
    "cartographer", "baker", "lighthouse keeper", "apprentice engineer", "beekeeper",
    "radio operator", "librarian", "ferry pilot",
]
COMPANIONS = [
    "a talking crow", "an old tin robot", "a three-legged fox", "a retired sea captain",
    "a very small dragon", "a map-reading goat",
]
SETTINGS = [
    "a harbour town built on stilts", "a forest where the trees hum at night", "a city of bridges",
    "a desert observatory", "an island that drifts a mile each year", "a village under deep snow",
]
GOALS = [
    "find {thing}", "repair {thing}", "return {thing} to its owner", "learn the secret of {thing}",
]
OBSTACLES = [
    "a storm that will not end", "a rival who wants {thing} too", "a map that changes each morning",
    "a bridge that has fallen", "a promise made long ago",
]
TIMES = ["At dawn", "By noon", "Late in the afternoon", "At dusk", "Long after midnight", "At last"]
SIGHTS = [
    "lanterns swayed", "gulls circled", "smoke curled from the chimneys",
    "the wind combed the grass",
    "rain drummed on the roofs", "the stars came out one by one", "bells rang somewhere far off",
]
FEELINGS = ["hopeful", "uneasy", "tired but determined", "quietly proud", "afraid", "delighted"]
DEFAULT_MOTIFS = ["lantern", "key", "river"]
DETERMINERS = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "with", "from", "by", "into", "over",
    "under", "through", "across",
})
RELATIVE_WORDS = frozenset({"who", "that", "which", "where", "when", "while"})
STOPWORDS = frozenset({
    "a", "an", "and", "the", "of", "in", "on", "at", "to", "for", "with", "from", "by", "about",
    "into", "over", "under", "story", "tale", "make", "write", "some", "very", "this", "that",
    "these", "those", "is", "are", "was", "were", "be", "my", "your", "our", "their", "its",
})

# Plot sentences, two per story beat, in story order.
BEATS: dict[str, list[str]] = {
    "opening": ["{hero}, a {trait} {role}, lived in {setting}.",
                "Nobody in {setting} paid much attention to {hero} until the day of the {motif}."],
    "call": ["A letter arrived asking {hero} to {goal}.",
             "{Companion} knocked on the door and said it was time to {goal}."],
    "journey": ["{hero} and {companion} set out across {setting}.",
                "The road was long, and {companion} talked about the {motif} the whole way."],
    "setback": ["Then came {obstacle}, and the plan fell apart.",
                "{hero} lost the {motif} and sat down, {feeling}."],
    "discovery": ["Under the old {motif}, {hero} found a clue nobody had noticed.",
                  "{Companion} remembered a story about {thing} that changed everything."],
    "confrontation": ["{hero} faced {obstacle} with nothing but the {motif}.",
                      "It took all of their courage to {goal}."],
    "resolution": ["In the end {hero} managed to {goal}, and {setting} was never the same.",
                   "{hero} went home {feeling}, with {companion} close behind."],
}
# Description sentences: the training corpus of the Markov chain.
DESCRIPTIONS = [
    "{time}, {sight}.", "{time}, {hero} felt {feeling}.", "The {motif} glinted as {sight}.",
    "{Companion} said nothing, but {sight}.", "Everyone in {setting} was talking about {thing}.",
    "{hero} thought about the {motif} and felt {feeling}.",
    "{time}, {companion} found a clue near the {motif}.",
    "Far away, {sight}, and {hero} kept walking.", "{hero} asked {companion} about the {motif}.",
    "Nobody had seen anything like the {motif} before.",
    "{Companion} hummed a song about the {motif}.",
    "{time}, the two of them rested while {sight}.",
    "{hero} wrote a note about {thing} in a notebook.",
]
# fmt: on
BEAT_ORDER = list(BEATS)


def seeded_rng(prompt: str, seed: int, purpose: str) -> random.Random:
    """Return a random generator that depends only on the prompt, the seed and ``purpose``."""
    digest = hashlib.sha256(f"{purpose}\x00{seed}\x00{prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def keywords(prompt: str) -> list[str]:
    """Return the likely nouns of the prompt, in order of first appearance.

    A rough heuristic without a part-of-speech tagger: after an article or preposition, the
    last word before the next function word or "-ing" verb is taken as a noun ("the last
    train through the mountains" gives train and mountains). Prompts without such phrases
    fall back to all content words, and empty ones to a default set.
    """
    words = re.findall(r"[a-z][a-z'-]+|[a-z]", prompt.lower())
    nouns: list[str] = []
    phrase: list[str] = []
    opens_phrase = False
    for word in [*words, "."]:
        boundary = (
            word in STOPWORDS
            or word in DETERMINERS
            or word in RELATIVE_WORDS
            or word.endswith("ing")
            or word == "."
        )
        if boundary:
            if phrase:
                nouns.append(phrase[-1])
            phrase = []
            opens_phrase = word in DETERMINERS
        elif opens_phrase:
            phrase.append(word)
    found = nouns or [w for w in words if w not in STOPWORDS and len(w) > 2]
    return list(dict.fromkeys(found)) or DEFAULT_MOTIFS


@dataclass
class World:
    """The cast and places of one story; ``slots`` fill the grammar's templates."""

    title: str
    slots: dict[str, str]
    motifs: list[str]
    beats: list[str] = field(default_factory=list)


def build_world(prompt: str, seed: int, beat_count: int) -> World:
    """Pick a hero, companion, setting, goal and obstacle for ``prompt`` and plan its beats."""
    rng = seeded_rng(prompt, seed, "world")
    motifs = keywords(prompt)
    thing = f"the {motifs[0]}"
    companion = rng.choice(COMPANIONS)
    slots = {
        "hero": rng.choice(NAMES),
        "trait": rng.choice(TRAITS),
        "role": rng.choice(ROLES),
        "companion": companion,
        "Companion": companion[0].upper() + companion[1:],
        "setting": rng.choice(SETTINGS),
        "thing": thing,
        "goal": rng.choice(GOALS).format(thing=thing),
        "obstacle": rng.choice(OBSTACLES).format(thing=thing),
    }
    title = f"{slots['hero']} and the {motifs[0].capitalize()}"
    # Spread the beats over the requested count. Two or more always include the opening and
    # the resolution, and a single beat is the resolution.
    last = len(BEAT_ORDER) - 1
    if beat_count == 1:
        beats = ["resolution"]
    else:
        beats = [BEAT_ORDER[round(i * last / (beat_count - 1))] for i in range(beat_count)]
    return World(title=title, slots=slots, motifs=motifs, beats=beats)


def fill(template: str, world: World, rng: random.Random, *, atomic: bool = False) -> str:
    """Fill one template; motif, time, sight and feeling are drawn fresh for each sentence.

    With ``atomic``, spaces inside each filled-in value become underscores. A Markov chain
    then treats a multi-word value as one token and cannot splice into the middle of it.
    """
    values = {
        **world.slots,
        "motif": rng.choice(world.motifs),
        "time": rng.choice(TIMES),
        "sight": rng.choice(SIGHTS),
        "feeling": rng.choice(FEELINGS),
    }
    if atomic:
        values = {key: value.replace(" ", "_") for key, value in values.items()}
    return template.format(**values)


def tokenize(text: str) -> list[str]:
    return re.findall(r"[\w'-]+|[.,!?]", text)


def detokenize(tokens: list[str]) -> str:
    return re.sub(r" ([.,!?])", r"\1", " ".join(tokens)).replace("_", " ")


class MarkovModel:
    """Second-order word Markov chain; ``None`` marks sentence starts and ends."""

    def __init__(self) -> None:
        self.transitions: dict[tuple[str | None, str | None], list[str | None]] = defaultdict(list)

    def train(self, sentences: list[str]) -> None:
        for sentence in sentences:
            tokens: list[str | None] = [None, None, *tokenize(sentence), None]
            for first, second, following in zip(tokens, tokens[1:], tokens[2:]):
                self.transitions[(first, second)].append(following)

    def sample(self, rng: random.Random, max_tokens: int = 40) -> str:
        state: tuple[str | None, str | None] = (None, None)
        out: list[str] = []
        while len(out) < max_tokens:
            following = rng.choice(self.transitions[state])
            if following is None:
                break
            out.append(following)
            state = (state[1], following)
        if not out or out[-1] not in ".!?":
            out.append(".")
        return detokenize(out)


def world_model(world: World, rng: random.Random, corpus_size: int) -> MarkovModel:
    """Train a Markov chain on ``corpus_size`` sentences of the world's grammar."""
    model = MarkovModel()
    model.train(
        [fill(rng.choice(DESCRIPTIONS), world, rng, atomic=True) for _ in range(corpus_size)]
    )
    return model


def sentence_score(
    sentence: str, world: World, used_words: set[str], used_sentences: set[str]
) -> float:
    """Score a candidate sentence; higher is better.

    The score rewards a motif mention and penalises repeated words, lengths far from 12
    words, and sentences already used in the story.
    """
    words = [w.lower() for w in tokenize(sentence) if w[0].isalnum()]
    if not words:
        return float("-inf")
    mentions_motif = any(w in world.motifs for w in words)
    repeated_inside = (len(words) - len(set(words))) / len(words)
    repeated_before = sum(w in used_words for w in words) / len(words)
    length_penalty = abs(len(words) - 12) / 6
    duplicate_penalty = 5.0 if sentence in used_sentences else 0.0
    return (
        float(mentions_motif)
        - 4.0 * repeated_inside
        - 2.0 * repeated_before
        - length_penalty
        - duplicate_penalty
    )


def write_passage(
    world: World,
    beat: str,
    model: MarkovModel,
    rng: random.Random,
    *,
    sentences: int,
    candidates: int,
    used_sentences: set[str] | None = None,
) -> str:
    """Write one beat's passage: its plot sentence, then best-of-``candidates`` samples.

    ``used_sentences`` collects the sentences chosen so far. Pass the same set for every
    passage of a story, so that its sampled sentences are penalised for appearing twice.
    """
    used_sentences = set() if used_sentences is None else used_sentences
    used_words: set[str] = set()
    parts = [fill(rng.choice(BEATS[beat]), world, rng)]
    for _ in range(sentences - 1):
        options = [model.sample(rng) for _ in range(candidates)]
        chosen = max(options, key=lambda s: sentence_score(s, world, used_words, used_sentences))
        used_words.update(w.lower() for w in tokenize(chosen))
        used_sentences.add(chosen)
        parts.append(chosen)
    return " ".join(parts)


# Reading statistics


def count_syllables(word: str) -> int:
    """Estimate the English syllables of ``word`` from its vowel groups.

    A final 'e' counts as silent, except in '-le' endings such as "table".
    """
    groups = re.findall(r"[aeiouy]+", word.lower())
    count = len(groups)
    if word.lower().endswith("e") and count > 1 and not word.lower().endswith("le"):
        count -= 1
    return max(1, count)


def reading_stats(text: str) -> dict[str, float | int]:
    """Return word, sentence and syllable counts, Flesch reading ease and reading time.

    Reading time assumes 200 words per minute.
    """
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", text)
    sentences = max(1, len(re.findall(r"[.!?]+", text)))
    syllables = sum(count_syllables(w) for w in words)
    n = max(1, len(words))
    ease = 206.835 - 1.015 * (n / sentences) - 84.6 * (syllables / n)
    return {
        "words": len(words),
        "sentences": sentences,
        "syllables": syllables,
        "flesch_reading_ease": round(ease, 1),
        "unique_word_ratio": round(len({w.lower() for w in words}) / n, 3),
        "reading_minutes": round(len(words) / 200, 2),
    }


# Layout


def break_lines(text: str, width: int) -> list[str]:
    """Split ``text`` into lines of at most ``width`` characters with minimum raggedness.

    Dynamic programming over break points minimises the sum of squared trailing spaces of
    every line but the last. A word longer than ``width`` gets a line of its own.
    """
    words = text.split()
    n = len(words)
    best = [0.0] * (n + 1)
    next_break = [n] * (n + 1)
    for start in range(n - 1, -1, -1):
        best[start] = float("inf")
        length = -1
        for end in range(start + 1, n + 1):
            length += len(words[end - 1]) + 1
            if length > width and end > start + 1:
                break
            slack = 0 if end == n else (width - length) ** 2
            if slack + best[end] < best[start]:
                best[start], next_break[start] = slack + best[end], end
    lines, start = [], 0
    while start < n:
        lines.append(" ".join(words[start : next_break[start]]))
        start = next_break[start]
    return lines
