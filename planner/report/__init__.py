"""Cost-benefit reports: ``data`` computes what a report shows, ``plots`` draws it, ``render`` writes HTML/Markdown.

``write_report`` (in ``planner.report.build``) does all three from a study or a plan file.
"""


def write_report(**kwargs):
    """See :func:`planner.report.build.write_report`."""
    from planner.report.build import write_report as _write

    return _write(**kwargs)
