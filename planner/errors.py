"""User-facing errors: one line naming the rule and the value; the CLI exits with 2."""

from __future__ import annotations


class PlannerError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class ValidationProblems(PlannerError):
    """Several input problems reported at once."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def collect(problems: list[str]) -> None:
    """Raise every problem found at once, or nothing when the list is empty."""
    if problems:
        raise ValidationProblems(problems)


def from_pydantic(exc, where: str = "") -> PlannerError:
    """Turn a pydantic ValidationError into one line that names each field, rule and value."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or where or "input"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(
            f"{loc}: {msg} (got {err.get('input')!r})"
            if "input" in err and not isinstance(err.get("input"), dict)
            else f"{loc}: {msg}"
        )
    return PlannerError("; ".join(parts))
