"""`planner report`."""


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="(not available yet)")
    p.set_defaults(func=lambda args: print("planner report: not available yet") or 1)
