"""The planner package's import graph, read from the source with ``ast`` (nothing is imported).

Prints:
- the cycles among modules linked by module-level imports (statements outside any ``def``; imports under
  ``if TYPE_CHECKING:`` are left out, they never run), each strongly connected component with one cycle through it;
- the cycles that imports inside functions hold apart: the same graph with function-level imports added;
- per module, how many imports sit inside functions (of them, how many import planner modules, and how many
  carry no comment saying why they are deferred: none on the statement's lines or on the line above it, nor
  above the run of import statements (one under the other, blank lines between them allowed) that it belongs
  to; a comment that is only a linter directive, ``# noqa: ...`` or ``# type: ignore[...]``, says nothing);
- each function-level import without such a comment, with its line (``--all`` lists every function-level import);
- the modules over 400 lines.

The project's rule: no import cycles, and an import inside a function only where a heavy dependency is deferred
on purpose, with a comment that says so.

Run from the repository root: ``python studies/import_graph.py`` (``--root DIR`` for another checkout).
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import tokenize
from pathlib import Path

LONG_MODULE = 400  # lines


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module under ``root/planner`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted((root / "planner").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module):
    """(import node, inside a function) for every import statement of a module."""

    def walk(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from walk(child, inner)

    yield from walk(tree, False)


def targets(node, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The planner modules an import statement loads (``from a import b``: ``a.b`` when that is a module, else ``a``)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:
            out.add(sub)
        elif base in known:
            out.add(base)
    return out


_DIRECTIVE = re.compile(
    r"#\s*(noqa\b(:\s*[A-Z]+[0-9]*(\s*,\s*[A-Z]+[0-9]*)*)?|type:\s*ignore(\[[^]]*\])?|pragma:[^#]*)"
)


def commented_lines(text: str) -> set[int]:
    """The lines that carry a comment saying something (linter directives such as ``# noqa: F401`` removed)."""
    out = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT and _DIRECTIVE.sub("", tok.string).strip(" #"):
            out.add(tok.start[0])
    return out


def explained(node: ast.stmt, comments: set[int], said_above: dict[int, bool], blank: set[int]) -> bool:
    """A comment on one of the statement's lines or on the line above it, or an explained import statement ending
    above it with only blank lines between (a run of imports under one comment); ``said_above``: last line ->
    explained, so far; ``blank``: the blank lines."""
    said = any(line in comments for line in range(node.lineno - 1, (node.end_lineno or node.lineno) + 1))
    above = node.lineno - 1
    while above in blank:
        above -= 1
    said = said or said_above.get(above, False)
    said_above[node.end_lineno or node.lineno] = said
    return said


def build(root: Path):
    """(module-level graph, graph with function-level imports too, function-level import counts, line counts,
    function-level imports per module as (line, statement, has a comment))."""
    files = module_names(root)
    known = set(files)
    top: dict[str, set[str]] = {m: set() for m in files}
    full: dict[str, set[str]] = {m: set() for m in files}
    inner: dict[str, tuple[int, int, int]] = {}
    lines: dict[str, int] = {}
    deferred: dict[str, list[tuple[int, str, bool]]] = {}
    for module, path in files.items():
        text = path.read_text()
        lines[module] = len(text.splitlines())
        comments = commented_lines(text)
        said_above: dict[int, bool] = {}
        blank = {i for i, line in enumerate(text.splitlines(), 1) if not line.strip()}
        n_all = n_planner = n_bare = 0
        for node, in_function in imports(ast.parse(text)):
            found = targets(node, module, path.name == "__init__.py", known) - {module}
            full[module] |= found
            if in_function:
                said = explained(node, comments, said_above, blank)
                n_all += 1
                n_planner += bool(found)
                n_bare += not said
                deferred.setdefault(module, []).append((node.lineno, " ".join(ast.unparse(node).split()), said))
            else:
                top[module] |= found
        inner[module] = (n_all, n_planner, n_bare)
    return top, full, inner, lines, deferred


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out, key=lambda c: (-len(c), c))


def a_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One shortest cycle through the first module of ``comp`` (breadth-first inside the component)."""
    start, members = comp[0], set(comp)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def print_cycles(title: str, graph: dict[str, set[str]], top: dict[str, set[str]]) -> None:
    """Each component, one cycle through it, and its edges (``(in a function)``: an import inside a function)."""
    comps = components(graph)
    print(f"{title}: {len(comps)}")
    for comp in comps:
        print(f"  {len(comp)} modules: {', '.join(comp)}")
        print(f"    e.g. {' -> '.join(a_cycle(graph, comp))}")
        for module in comp:
            for target in sorted(graph[module] & set(comp)):
                print(f"    {module} -> {target}{'' if target in top[module] else ' (in a function)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help="repository root")
    parser.add_argument("--all", action="store_true", help="list every function-level import, not only the bare ones")
    args = parser.parse_args()
    top, full, inner, lines, deferred = build(Path(args.root))
    print_cycles("import cycles (module-level imports)", top, top)
    print_cycles("import cycles held apart by function-level imports (module- and function-level imports)", full, top)
    counted = {m: n for m, n in inner.items() if n[0]}
    bare = {m: n for m, n in counted.items() if n[2]}
    print(
        f"function-level imports: {sum(n[0] for n in counted.values())} in {len(counted)} modules "
        f"({sum(n[1] for n in counted.values())} of planner modules; "
        f"{sum(n[2] for n in counted.values())} in {len(bare)} modules without a comment)"
    )
    for module, (n_all, n_planner, n_bare) in sorted(counted.items(), key=lambda kv: (-kv[1][0], kv[0])):
        print(f"  {n_all:3d} ({n_planner:3d} planner, {n_bare:3d} without a comment)  {module}")
    listed = {m: [d for d in found if args.all or not d[2]] for m, found in deferred.items()}
    listed = {m: found for m, found in listed.items() if found}
    print(
        f"function-level imports {'(* without a comment)' if args.all else 'without a comment'}: "
        f"{sum(map(len, listed.values()))}"
    )
    for module, found in sorted(listed.items()):
        print(f"  {module}")
        for line, statement, said in found:
            print(f"    {'' if said or not args.all else '* '}{line:4d}: {statement}")
    long = sorted(((n, m) for m, n in lines.items() if n > LONG_MODULE), reverse=True)
    print(f"modules over {LONG_MODULE} lines: {len(long)}")
    for n, module in long:
        print(f"  {n:5d}  {module}")


if __name__ == "__main__":
    main()
