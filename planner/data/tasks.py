"""Built-in procedural text: the pretraining corpus and the fine-tuning tasks (one registry).

The corpus teaches structure (counting, number words, copying, order) in free text; each
task is a *different* job posed as a prompt and a short answer, scored by exact match.
Everything is drawn from a ``random.Random`` so a seed fixes the text.
"""

from __future__ import annotations

import random
from typing import Callable

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
ALNUM = LETTERS + "0123456789"


def _word(rng: random.Random, lo: int, hi: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


# ---- pretraining corpus: one line of text per call --------------------------------------------


def _counting(rng):
    start, step = rng.randint(0, 90), rng.choice((1, 1, 1, 2, 3, 5, 10))
    n = rng.randint(4, 8)
    seq = " ".join(str(start + i * step) for i in range(n))
    return f"count {seq}" if step == 1 else f"count by {step} from {start}: {seq}"


def _number_words(rng):
    n = rng.randint(0, 999)
    words = " ".join(DIGIT_WORDS[int(d)] for d in str(n))
    return f"{n} reads {words}" if rng.random() < 0.5 else f"{words} is {n}"


def _copying(rng):
    w = _word(rng, 3, 10)
    return rng.choice((f"copy {w}: {w}", f"say {w} twice: {w} {w}", f"{w} = {w}"))


def _neighbours(rng):
    n = rng.randint(1, 998)
    return rng.choice((f"after {n} comes {n + 1}", f"before {n} comes {n - 1}"))


def _compare(rng):
    a, b = rng.sample(range(100), 2)
    return f"{a} is more than {b}" if a > b else f"{a} is less than {b}"


def _pairs(rng):
    # "name: value" pairs, as in a list of settings: structure, not lookups
    k = rng.randint(2, 5)
    return ", ".join(f"{rng.choice(LETTERS)}: {rng.randint(0, 9)}" for _ in range(k))


CORPUS_SOURCES: tuple[Callable[[random.Random], str], ...] = (
    _counting,
    _number_words,
    _copying,
    _neighbours,
    _compare,
    _pairs,
)


def corpus_line(rng: random.Random) -> str:
    """One line of the pretraining corpus."""
    return rng.choice(CORPUS_SOURCES)(rng)


def corpus_text(rng: random.Random, n_chars: int) -> str:
    """Lines of corpus text joined by newlines, at least ``n_chars`` long (then cut)."""
    parts, size = [], -1  # n lines take sum(len) + n - 1 characters
    while size < n_chars:
        line = corpus_line(rng)
        parts.append(line)
        size += len(line) + 1
    return "\n".join(parts)[:n_chars]


# ---- fine-tuning tasks: (prompt, answer) --------------------------------------------------------


def addition(rng: random.Random, digits: int = 2) -> tuple[str, str]:
    """``"37+48="`` → ``"85"``: operands of 1..``digits`` digits."""
    a, b = (rng.randint(0, 10 ** rng.randint(1, digits) - 1) for _ in range(2))
    return f"{a}+{b}=", str(a + b)


def increment(rng: random.Random, digits: int = 3, step: int = 9) -> tuple[str, str]:
    """``"664+7="`` → ``"671"``: a number of up to ``digits`` digits plus 1..``step``."""
    a, b = rng.randint(0, 10**digits - 1), rng.randint(1, step)
    return f"{a}+{b}=", str(a + b)


def maximum(rng: random.Random, count: int = 3, digits: int = 2) -> tuple[str, str]:
    """``"max 37 82 15: "`` → ``"82"``: the largest of ``count`` distinct numbers (the prompt ends as corpus lines that list numbers do)."""
    nums = rng.sample(range(10**digits), count)
    return "max " + " ".join(map(str, nums)) + ": ", str(max(nums))


def reversal(rng: random.Random, length: int = 5) -> tuple[str, str]:
    """``"reverse kq3z:"`` → ``"z3qk"``: strings of 3..``length`` characters."""
    w = _word(rng, 3, length)
    return f"reverse {w}:", w[::-1]


def sorting(rng: random.Random, length: int = 5) -> tuple[str, str]:
    """``"sort 5183:"`` → ``"1358"``: 3..``length`` digits in ascending order."""
    w = _word(rng, 3, length, "0123456789")
    return f"sort {w}:", "".join(sorted(w))


def lookup(rng: random.Random, keys: int = 6, digits: int = 2) -> tuple[str, str]:
    """``"a37 k05 c91|k"`` → ``"05"``: the ``digits``-digit value of one of ``keys`` distinct letter keys."""
    names = rng.sample(LETTERS, keys)
    values = [f"{rng.randint(0, 10**digits - 1):0{digits}d}" for _ in names]
    q = rng.randrange(keys)
    return " ".join(k + v for k, v in zip(names, values)) + f"|{names[q]}", values[q]


TASKS: dict[str, Callable[..., tuple[str, str]]] = {
    "addition": addition,
    "increment": increment,
    "maximum": maximum,
    "reversal": reversal,
    "sort": sorting,
    "lookup": lookup,
}
