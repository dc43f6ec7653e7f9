"""Trial kinds: what a trial of `planner tune` is, stored in its record's ``kind`` (``user_attrs['kind']``), one of:

- :class:`Search` (``"search"``): a point the sampler drew, or one queued as a searched trial (``offered``);
  a trial that never stored a kind is a searched one;
- :class:`Baseline` (``"baseline:<name>"``, e.g. ``"baseline:lora"``): a reference configuration
  (:mod:`planner.tune.study.baselines`); its learning-rate sweep runs are trials of the same kind with ``lr_sweep``
  set to the factor (:attr:`planner.tune.study.record.TrialRecord.is_sweep`);
- :class:`Confirm` (``"confirm:<trial>:<i>"``, e.g. ``"confirm:23:0"``): trial ``<trial>``'s point trained again
  with confirmation seed index ``<i>`` (:mod:`planner.tune.study.confirm`).

A kind is its stored string (``Baseline("lora") == "baseline:lora"``), so kinds compare, hash and serialize as the
strings they stand for; :func:`parse_kind` turns a string into one, and refuses any other string.

This module is a leaf: it imports nothing (the trial record, :mod:`planner.tune.study.record`, builds on it).
"""

from __future__ import annotations

KIND_FORMS = "'search', 'baseline:<name>' or 'confirm:<trial number>:<seed index>'"


class BadTrialKind(ValueError):
    """A string that is no trial kind."""


class TrialKind(str):
    """A trial's kind; the instance is the string stored in ``user_attrs['kind']``. Build one with
    :class:`Search`, :class:`Baseline` or :class:`Confirm`, or :func:`parse_kind` from a stored string."""

    __slots__ = ()

    def __new__(cls, *args):
        if cls is TrialKind:
            raise TypeError(
                "TrialKind is abstract: use Search(), Baseline(name), Confirm(trial, seed) or parse_kind(text)"
            )
        return super().__new__(cls, *args)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.__getnewargs__()))})"


class Search(TrialKind):
    """A searched trial: ``"search"``."""

    __slots__ = ()
    TEXT = "search"

    def __new__(cls):
        return super().__new__(cls, cls.TEXT)

    def __getnewargs__(self) -> tuple:
        return ()


class Baseline(TrialKind):
    """A baseline's trial: ``"baseline:<name>"`` (at its default learning rate, or a sweep run of it)."""

    __slots__ = ()
    PREFIX = "baseline:"

    def __new__(cls, name: str):
        if not isinstance(name, str) or not name or ":" in name or name != name.strip() or " " in name:
            raise BadTrialKind(f"a baseline's name must be a word without ':' or spaces, but got {name!r}")
        return super().__new__(cls, cls.PREFIX + name)

    @property
    def name(self) -> str:
        """The baseline's name, e.g. ``"lora"``."""
        return str(self)[len(self.PREFIX) :]

    def __getnewargs__(self) -> tuple:
        return (self.name,)


class Confirm(TrialKind):
    """A confirmation run: ``"confirm:<trial>:<seed>"``, trial ``trial``'s point with confirmation seed index ``seed``."""

    __slots__ = ()
    PREFIX = "confirm:"

    def __new__(cls, trial: int, seed: int):
        for what, value in (("trial number", trial), ("seed index", seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BadTrialKind(f"a confirmation run's {what} must be an integer >= 0, but got {value!r}")
        return super().__new__(cls, f"{cls.PREFIX}{trial}:{seed}")

    @property
    def trial(self) -> int:
        """The number of the trial whose point this run trains again."""
        return int(str(self).split(":")[1])

    @property
    def seed(self) -> int:
        """The confirmation seed index (the seed itself: :func:`planner.tune.study.confirm.confirm_seed`)."""
        return int(str(self).split(":")[2])

    def __getnewargs__(self) -> tuple:
        return (self.trial, self.seed)


SEARCH = Search()


def _count(text: str) -> int | None:
    """A non-negative integer written as :class:`Confirm` writes it (no sign, spaces or leading zeros), else None."""
    return int(text) if text.isascii() and text.isdigit() and str(int(text)) == text else None


def parse_kind(text) -> TrialKind:
    """The kind a stored string stands for; :class:`BadTrialKind` for any other string (or a non-string)."""
    if isinstance(text, TrialKind):
        return text
    if not isinstance(text, str):
        raise BadTrialKind(f"a trial kind must be a string, {KIND_FORMS}, but got {text!r}")
    if text == Search.TEXT:
        return SEARCH
    head, _, rest = text.partition(":")
    if head + ":" == Baseline.PREFIX and rest and ":" not in rest:
        try:
            return Baseline(rest)
        except BadTrialKind:
            pass
    if head + ":" == Confirm.PREFIX:
        trial, sep, seed = rest.partition(":")
        number, index = _count(trial), _count(seed)  # a second ':' leaves ``seed`` no count
        if sep and number is not None and index is not None:
            return Confirm(number, index)
    raise BadTrialKind(f"a trial kind must be {KIND_FORMS}, but got {text!r}")
