"""Counterfactual captions for count-aware CLIP (docs/methods.md, Count-aware CLIP).

A *counting* caption names exactly one count two..ten, as a word ("four parrots") or a digit
("4 parrots"). Its counterfactual swaps that count for another one and changes nothing else, so the
only thing telling the true caption from the counterfactual is the number: the signal L_count needs.

Detection is a conservative heuristic: whatever is doubtful is *not* a count, and a caption with a
doubtful or second number is non-counting (the loss skips it), because a wrong counterfactual would
teach the model the wrong count.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

COUNT_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
COUNTS = range(2, 11)

_WORD_TO_COUNT = {w: c for c, w in zip(COUNTS, COUNT_WORDS)}
# Number words glued to a count make a bigger number ("twenty two", "two hundred", "three dozen eggs").
_TENS = r"twenty|thirty|forty|fourty|fifty|sixty|seventy|eighty|ninety"
_MULTIPLIERS = r"hundreds?|thousands?|millions?|billions?|dozens?"
# Words after a number that make it a time or a share, not a count of things ("five o'clock", "5 pm").
_NOT_COUNTED = r"o'clock|o’clock|a\.?m\b\.?|p\.?m\b\.?|percent|per\s+cent"

# Words: whole words only, so "often", "tent", "tenth", "twos" never match. A hyphen on either side
# makes a compound ("ten-year-old", "two-thirds", "twenty-two", "four-legged"): not a count of objects.
_WORD = rf"(?<![\w\-])(?P<word>{'|'.join(COUNT_WORDS)})(?![\w\-])"
# Digits: a lone 2..10. Not part of a longer number ("2020", "100"), a decimal or thousands group
# ("2.5", "1,000", "3,5"), a unit or ordinal ("3D", "2nd", "10x"), a share or range ("10%", "2-3"),
# money, a time, a fraction or a tag ("$5", "10:30", "1/2", "#3"). A sentence-final "3." is a count.
_DIGIT = r"(?<![\w\-+$£€#/:.,])(?<!\d[.,])(?P<digit>10|[2-9])(?![\w\-%°/:])(?![.,]\d)"
_MENTION = re.compile(rf"{_WORD}|{_DIGIT}", re.IGNORECASE)
_COMPOUND_BEFORE = re.compile(rf"(?:^|\W)(?:{_TENS})\s+$", re.IGNORECASE)
_COMPOUND_AFTER = re.compile(rf"^\s+(?:{_MULTIPLIERS}|{_NOT_COUNTED})(?!\w)", re.IGNORECASE)


@dataclass(frozen=True)
class CountMention:
    """Where the count sits in a caption (`caption[start:end]`), its value and how it is written."""

    start: int
    end: int
    count: int
    form: Literal["word", "digit"]


def _mentions(caption: str) -> list[CountMention]:
    found = []
    for m in _MENTION.finditer(caption):
        word = m.group("word")
        form: Literal["word", "digit"] = "word" if word is not None else "digit"
        count = _WORD_TO_COUNT[word.lower()] if word is not None else int(m.group("digit"))
        found.append(CountMention(m.start(), m.end(), count, form))
    return found


def _is_compound(caption: str, mention: CountMention) -> bool:
    return bool(_COMPOUND_BEFORE.search(caption[:mention.start]) or _COMPOUND_AFTER.match(caption[mention.end:]))


def find_count(caption: str) -> CountMention | None:
    """The one count two..ten a caption names, or None if the caption is non-counting.

    Non-counting: no count ("a dog", "one red circle": "one", "a" and "1" are outside the two..ten
    benchmark), or more than one mention ("two cats and three dogs", "two cats, two hats"), since then
    it is ambiguous which count the image is meant to show, or a count that is part of a bigger number,
    a time or a share ("twenty two", "two dozen eggs", "five o'clock", "5 pm"). Numbers that can never
    be a count ("2020", "2.5", "10%", "3D", "eleven") are ignored and do not make a caption ambiguous.
    """
    mentions = _mentions(caption)
    if len(mentions) != 1 or _is_compound(caption, mentions[0]):
        return None
    return mentions[0]


def is_counting(caption: str) -> bool:
    """True when the caption names exactly one count two..ten (see `find_count`)."""
    return find_count(caption) is not None


def _check_count(count: int) -> None:
    if count not in COUNTS:
        raise ValueError(f"count must be in {COUNTS.start}..{COUNTS.stop - 1}, got {count}")


def _match_case(word: str, template: str) -> str:
    if len(template) > 1 and template.isupper():
        return word.upper()
    return word.capitalize() if template[:1].isupper() else word


def with_count(caption: str, mention: CountMention, count: int) -> str:
    """`caption` with its count replaced by `count`, in the same form (word or digit) and case.

    Only the number changes: every count two..ten takes a plural noun, so "four parrots" becomes
    "seven parrots" with the noun untouched. `mention` must come from `find_count(caption)`.
    """
    _check_count(count)
    written = caption[mention.start:mention.end]
    expected = COUNT_WORDS[mention.count - 2] if mention.form == "word" else str(mention.count)
    if written.lower() != expected:
        raise ValueError(f"mention {mention} does not match caption {caption!r} (found {written!r})")
    new = _match_case(COUNT_WORDS[count - 2], written) if mention.form == "word" else str(count)
    return caption[:mention.start] + new + caption[mention.end:]


def counterfactual(caption: str, rng: random.Random) -> str | None:
    """The caption with a different count drawn uniformly from the other 8; None if non-counting."""
    mention = find_count(caption)
    if mention is None:
        return None
    return with_count(caption, mention, rng.choice([c for c in COUNTS if c != mention.count]))


def all_counterfactuals(caption: str) -> list[str] | None:
    """The 8 captions with every other count, in count order (the L_count+ variant); None if non-counting."""
    mention = find_count(caption)
    if mention is None:
        return None
    return [with_count(caption, mention, c) for c in COUNTS if c != mention.count]


def count_captions(caption: str) -> list[str] | None:
    """The 9 captions naming two..ten (index i <-> count i + 2), the CountBench read-out; None if non-counting.

    The caption's own count is among them, written as it was.
    """
    mention = find_count(caption)
    if mention is None:
        return None
    return [with_count(caption, mention, c) for c in COUNTS]
