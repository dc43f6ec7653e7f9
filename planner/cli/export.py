"""`planner export`."""


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="(not available yet)")
    p.set_defaults(func=lambda args: print("planner export: not available yet") or 1)
