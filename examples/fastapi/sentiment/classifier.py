"""A tiny text sentiment classifier: a logistic model over a word lexicon.

The score is ``bias + sum(weight(word))``, with the sign of a word flipped when it follows a
negation ("not good"); the probability of the positive class is the logistic of that score.
Version ``v2`` is the same model retrained a little: a few weights moved, a few words added and a
slightly different bias, so both versions agree on clear texts and differ on borderline ones.

The lexicon and the rules are the same as canary-model's (the project's Rust model server), so
both servers give the same answers to the same texts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

VERSIONS = ("v1", "v2")
CLASSES = ("negative", "positive")

BASE_WEIGHTS = {
    "good": 1.2,
    "great": 1.8,
    "excellent": 2.2,
    "amazing": 2.0,
    "love": 1.9,
    "loved": 1.9,
    "like": 0.8,
    "nice": 1.0,
    "happy": 1.4,
    "fast": 0.7,
    "helpful": 1.3,
    "recommend": 1.5,
    "perfect": 2.1,
    "fine": 0.4,
    "works": 0.6,
    "best": 1.7,
    "enjoyed": 1.6,
    "bad": -1.4,
    "terrible": -2.2,
    "awful": -2.1,
    "hate": -2.0,
    "hated": -2.0,
    "poor": -1.3,
    "slow": -0.9,
    "broken": -1.8,
    "worst": -2.3,
    "disappointed": -1.7,
    "disappointing": -1.7,
    "useless": -1.9,
    "boring": -1.2,
    "refund": -1.1,
    "crash": -1.2,
    "crashes": -1.2,
    "bug": -0.8,
    "wrong": -1.0,
    "expensive": -0.5,
}

# Version 2's changes to the base lexicon: re-estimated weights and new words.
V2_WEIGHTS = {
    "fine": 0.2,
    "slow": -1.1,
    "expensive": -0.8,
    "okay": 0.3,
    "meh": -0.7,
    "solid": 1.1,
    "reliable": 1.2,
    "laggy": -1.0,
}

BIAS = {"v1": 0.15, "v2": 0.05}

# Words that flip the sign of the next NEGATION_SPAN words; punctuation ends their reach.
NEGATIONS = frozenset({"not", "no", "never", "hardly", "without"})
NEGATION_SPAN = 2
CLAUSE_END = re.compile(r"[.,;:!?]")


@dataclass(frozen=True)
class Prediction:
    label: str
    # Probability of the predicted class, in 0.5..1.
    confidence: float
    # Probability of the positive class, in 0..1.
    positive_probability: float


def tokens(text: str) -> list[str]:
    """Lower-case words: maximal runs of alphanumeric characters and apostrophes."""
    words = []
    current = []
    for ch in text:
        if ch.isalnum() or ch == "'":
            current.append(ch)
        elif current:
            words.append("".join(current).lower())
            current = []
    if current:
        words.append("".join(current).lower())
    return words


class Classifier:
    def __init__(self, version: str) -> None:
        if version not in VERSIONS:
            raise ValueError(f"unknown model version {version!r}: use v1 or v2")
        self.version = version
        self.weights = dict(BASE_WEIGHTS)
        if version == "v2":
            self.weights.update(V2_WEIGHTS)
        self.bias = BIAS[version]

    def score(self, text: str) -> float:
        """The log-odds of the positive class."""
        score = self.bias
        for clause in CLAUSE_END.split(text):
            negated_for = 0
            for word in tokens(clause):
                if word in NEGATIONS or word.endswith("n't"):
                    negated_for = NEGATION_SPAN
                    continue
                weight = self.weights.get(word, 0.0)
                score += -weight if negated_for > 0 else weight
                negated_for = max(negated_for - 1, 0)
        return score

    def predict(self, text: str) -> Prediction:
        p = 1.0 / (1.0 + math.exp(-self.score(text)))
        label = "positive" if p >= 0.5 else "negative"
        return Prediction(label=label, confidence=max(p, 1.0 - p), positive_probability=p)
