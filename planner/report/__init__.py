"""Cost-benefit reports: ``study`` and ``plan`` compute what a report shows (``data``), ``plots`` draws it,
``render`` writes HTML/Markdown.

``write_report`` (in ``planner.report.build``) does all three from a study or a plan file.
"""

from planner.report.build import write_report

__all__ = ["write_report"]
