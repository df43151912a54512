"""Imports inside functions only with a reason (DESIGN.md, "Layout").

Every ``import`` / ``from ... import`` inside a function (or method) under ``align/``, ``rm/``,
``rollouts/`` and ``eval/`` must carry a comment saying why it is not at the module top, e.g.
``# lazy: vllm is optional`` or ``# lazy: keeps torch off 'align --help'``. The comment goes on
the import's own line(s), or on the line right above it; a comment above a run of consecutive
imports covers the whole run. Pragmas alone (``# noqa``, ``# type:``, ``# fmt:``) are no reason.
"""

from __future__ import annotations

import ast
import io
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("align", "rm", "rollouts", "eval")
PRAGMAS = ("noqa", "type:", "fmt:", "pragma")
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
IMPORTS = (ast.Import, ast.ImportFrom)


def _reasons(source: str) -> dict[int, str]:
    """``{line number: comment text}`` of every comment that is more than a pragma."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if text and not text.startswith(PRAGMAS):
                out[tok.start[0]] = text
    return out


def _statement_lists(node: ast.AST):
    """Every list of statements directly under ``node`` (bodies, else/finally, handlers)."""
    for name in ("body", "orelse", "finalbody"):
        stmts = getattr(node, name, None)
        if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
            yield stmts
    for handler in getattr(node, "handlers", []):
        yield handler.body
    for case in getattr(node, "cases", []):
        yield case.body


def _unexplained_in(stmts: list[ast.stmt], reasons: dict[int, str]) -> list[ast.stmt]:
    """Imports in one statement list with no reason on their lines, above them, or above the
    run of consecutive imports they belong to."""
    missing, run_start = [], None
    for stmt in stmts:
        if not isinstance(stmt, IMPORTS):
            run_start = None
            continue
        if run_start is None:
            run_start = stmt.lineno
        own = any(n in reasons for n in range(stmt.lineno, stmt.end_lineno + 1))
        if not (own or stmt.lineno - 1 in reasons or run_start - 1 in reasons):
            missing.append(stmt)
    return missing


def unexplained_imports(source: str) -> list[tuple[int, str]]:
    """``(line, source line)`` of every function-level import without a reason comment."""
    tree, reasons, lines = ast.parse(source), _reasons(source), source.splitlines()
    found: list[ast.stmt] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if in_function:
            for stmts in _statement_lists(node):
                found.extend(_unexplained_in(stmts, reasons))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(child, FUNCTIONS))

    visit(tree, False)
    return sorted((s.lineno, lines[s.lineno - 1].strip()) for s in found)


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_function_level_import_says_why():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in _modules()
        for line, text in unexplained_imports(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, (
        "imports inside functions need a reason comment (e.g. `# lazy: vllm is optional`), or "
        "belong at the module top:\n" + "\n".join(offenders)
    )


def test_the_packages_are_all_scanned():
    """The walk sees every package (a renamed folder would silently pass the test above)."""
    scanned = {p.relative_to(ROOT).parts[0] for p in _modules()}
    assert scanned == set(PACKAGES)
    assert len(_modules()) > 40


SAMPLE = textwrap.dedent(
    '''
    import os  # module level: never reported
    from pathlib import Path


    def bare():
        import json
        return json


    def explained():
        import vllm  # lazy: vllm is optional
        # lazy: keeps torch off 'align --help'
        import torch
        return vllm, torch


    def block():
        # lazy: these load transformers
        from transformers import AutoTokenizer

        from align.core.chat_formats import get_chat_format
        x = 1
        from rm.functions import reward_inputs
        return AutoTokenizer, get_chat_format, x, reward_inputs


    def pragma_only():
        from align.core.data import load_records  # noqa: F401
        if True:
            import yaml
        return load_records, yaml


    class C:
        def method(self):
            def inner():
                from eval.gsb import summarize
                return summarize
            return inner


    def documented():
        """# not a comment, a docstring"""
        import hashlib
        return hashlib
    '''
)


def test_the_checker_reports_exactly_the_unexplained_imports():
    """Hand-checked: the comment on the line, above it, above its run of imports and a pragma."""
    lines = SAMPLE.splitlines()

    def line_of(text: str) -> int:
        return next(k for k, line in enumerate(lines, start=1) if line.strip() == text)

    expected = [
        "import json",
        "from rm.functions import reward_inputs",  # the run above it ended at `x = 1`
        "from align.core.data import load_records  # noqa: F401",
        "import yaml",
        "from eval.gsb import summarize",
        "import hashlib",
    ]
    assert unexplained_imports(SAMPLE) == sorted((line_of(t), t) for t in expected)
