"""Every error and warning message geors can print, read from the source code.

Walks ``geors/**/*.py`` with :mod:`ast` and collects

- every ``raise SomeError(message)`` (the CLI prints ``Error: <message>`` for a
  :class:`geors.errors.GeorsError` and exits with its ``exit_code``),
- every ``log.warning(...)`` / ``log.error(...)`` (printed as
  ``WARNING geors.<module>: <message>``),
- every ``click.BadParameter(...)`` (printed by click as ``Error: Invalid value ...``),
- the end-of-run problems and cancellation notices the commands print themselves
  (``click.echo(..., err=True)`` and ``problems.append(...)`` in ``geors/cli``).

Parts of a message that depend on the input (f-string fields, ``%s`` arguments)
are shown as ``‹expression›``. The troubleshooting page is built from this
(``docs/gen/hooks.py``) and ``tests/test_docs.py`` checks it, so the page
cannot fall behind the code.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "geors"

LOG_METHODS = {"warning": "WARNING", "error": "ERROR"}
# words that make a line a command prints on stderr a problem report rather than progress
CLI_PROBLEM_WORDS = ("Error", "Cancelled", "Aborted", "stopping", "failed", "skipped")


@dataclasses.dataclass(frozen=True)
class Message:
    kind: str          # exception class name, or WARNING / ERROR for log calls
    text: str          # the message with ‹placeholders›
    module: str        # geors.cli.options
    function: str      # enclosing function or class.method ("" at module level)
    line: int
    static: bool       # False when the message is built elsewhere (a variable, a call)


def _placeholder(node: ast.AST) -> str:
    return "‹" + ast.unparse(node) + "›"


def _render(node: ast.AST, funcs: dict[str, ast.FunctionDef]) -> tuple[str, bool]:
    """Text of a message expression with placeholders; static=False if not a literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, True
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            elif isinstance(v, ast.FormattedValue):
                parts.append(_placeholder(v.value))
        return "".join(parts), True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, ls = _render(node.left, funcs)
        right, rs = _render(node.right, funcs)
        return left + right, ls and rs
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):  # "..." % (...)
        text, ok = _render(node.left, funcs)
        return _percent(text, node.right), ok
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join":
        return _placeholder(node), True
    callee = (node.func.id if isinstance(node.func, ast.Name) else node.func.attr
              if isinstance(node.func, ast.Attribute) else None) if isinstance(node, ast.Call) else None
    if callee in funcs:
        # a helper that builds the message: show what it returns
        returns = [n.value for n in ast.walk(funcs[callee]) if isinstance(n, ast.Return) and n.value]
        if returns:
            texts = [_render(r, funcs)[0] for r in returns]
            return " | ".join(texts), True
    return _placeholder(node), False


def _percent(text: str, args: ast.AST | list[ast.AST]) -> str:
    values = list(args.elts) if isinstance(args, ast.Tuple) else (args if isinstance(args, list) else [args])
    out, i, k = [], 0, 0
    while i < len(text):
        if text[i] == "%" and i + 1 < len(text):
            j = i + 1
            while j < len(text) and text[j] in "0123456789.-+ #":
                j += 1
            if j < len(text) and text[j] == "%":
                out.append("%")
            elif j < len(text):
                out.append(_placeholder(values[k]) if k < len(values) else "‹?›")
                k += 1
            i = j + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def _exception_name(call: ast.Call) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        return f.attr
    return None


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: str, funcs: dict[str, ast.FunctionDef]):
        self.module = module
        self.funcs = funcs
        self.stack: list[str] = []
        self.found: list[Message] = []

    def _scoped(self, node):
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def _add(self, kind: str, node: ast.AST, text: str, static: bool) -> None:
        self.found.append(Message(kind, text, self.module, ".".join(self.stack), node.lineno, static))

    def visit_Raise(self, node: ast.Raise) -> None:
        exc = node.exc
        if isinstance(exc, ast.Call):
            name = _exception_name(exc)
            if name and name not in ("SystemExit",) and (name.endswith(("Error", "Exception", "Parameter"))
                                                         or name == "Cancelled"):
                if exc.args:
                    text, static = _render(exc.args[0], self.funcs)
                    self._add(name, node, text, static)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if (isinstance(f, ast.Attribute) and f.attr in LOG_METHODS and isinstance(f.value, ast.Name)
                and f.value.id in ("log", "logger", "LOG") and node.args):
            text, static = _render(node.args[0], self.funcs)
            self._add(LOG_METHODS[f.attr], node, _percent(text, node.args[1:]), static)
        elif self.module.startswith("geors.cli") and isinstance(f, ast.Attribute) and node.args and (
                (f.attr == "echo" and any(k.arg == "err" for k in node.keywords)) or f.attr == "append"):
            text, static = _render(node.args[0], self.funcs)
            if f.attr == "append" and not (isinstance(f.value, ast.Name) and f.value.id == "problems"):
                pass
            elif any(w in text for w in CLI_PROBLEM_WORDS):
                self._add("CLI", node, text.strip(), static)
        self.generic_visit(node)


@functools.lru_cache(maxsize=4)
def collect(package: Path = PACKAGE) -> tuple[Message, ...]:
    """All messages in ``package``, in file order."""
    out: list[Message] = []
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
             for path in sorted(package.rglob("*.py"))}
    # message helpers may live in another module (sam_weights.missing_checkpoint_message)
    helpers = {n.name: n for tree in trees.values() for n in ast.walk(tree)
               if isinstance(n, ast.FunctionDef) and n.name.endswith("_message")}
    for path, tree in trees.items():
        rel = path.relative_to(package.parent).with_suffix("")
        module = ".".join(p for p in rel.parts if p != "__init__")
        funcs = {**helpers, **{n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}}
        v = _Visitor(module, funcs)
        v.visit(tree)
        out.extend(v.found)
    return tuple(out)


def exception_classes(package: Path = PACKAGE) -> dict[str, tuple[list[str], str]]:
    """``{class name: (base names, docstring)}`` of the exception classes defined in the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception")) or b == "GeorsError" for b in bases) or node.name == "GeorsError":
                    out[node.name] = (bases, (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " "))
    return out
