"""`planner profile`."""


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="(not available yet)")
    p.set_defaults(func=lambda args: print("planner profile: not available yet") or 1)
