"""`planner tune`."""


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="(not available yet)")
    p.set_defaults(func=lambda args: print("planner tune: not available yet") or 1)
