"""`planner estimate`."""


def add_parser(sub) -> None:
    p = sub.add_parser("estimate", help="(not available yet)")
    p.set_defaults(func=lambda args: print("planner estimate: not available yet") or 1)
