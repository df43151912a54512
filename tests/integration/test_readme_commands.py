"""Every command line in README.md and the guides of docs/ still parses: the documentation cannot
drift from the command line.

Every ``align ...`` command of the README and of ``docs/*.md`` (``config.md`` aside) — the lines
of their fenced code blocks (``\\`` continuations and indented continuation lines joined,
trailing ``# comments`` and leading ``VAR=value`` assignments dropped) and their inline code
spans — is checked in-process through
:func:`align.cli.app.main`, run from the repository root:

- every ``--option`` the line names must appear, spelled the same, in ``align <words> --help``
  (so an old spelling, which still works with a warning but is no longer listed, fails too);
- a concrete line of a config command is run with ``--show_config`` appended, which parses and
  validates every option without running anything: exit status 0 and no old-spelling warning;
- synopsis lines (``[--out DIR]``, ``0|5``, ``FILE`` / ``DIR`` / ``N`` placeholders, ``...``),
  commands without a config (``data validate``, ``data financeiq-prefs``) and a command named
  in prose (``align eval gsb``) get the help check alone.

``accelerate launch ... recipes/X.py --config Y <overrides>`` lines: accelerate's own options are
parsed by accelerate's parser, the named files must exist, and the recipe's config class (the
class the recipe calls ``from_sources`` on) must load ``Y`` with the overrides. ``make X`` lines
must name a Makefile target (``make -n X``). Every repository file and folder the README names
(``align/tiny/world.py``, ``tests/unit/``) must exist, and every Python name
(``align.core.data``, ``align.tiny.reward:tiny_world_reward``, ``from X import a``) must be
defined in the repository's sources.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shlex
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

#: A placeholder word: FILE, DIR, N, SFT_DIR, FILE.yaml, P.jsonl.
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.[a-z]+)?/?$")
#: An option a line names: ``--rollout.vllm.dtype``, ``--n``, ``--show_config``.
OPTION = re.compile(r"^\[*(--[a-z][a-z0-9_.\-]*)")
#: A shell variable assignment before the command: ``OPENAI_API_KEY=...``.
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")

#: The config class each recipe builds (checked against the recipe's source below).
RECIPE_CONFIGS = {
    "recipes/ppo.py": ("align.ppo.config", "PPOConfig"),
    "recipes/pei.py": ("align.pei.run", "PEIConfig"),
    "recipes/pretrain.py": ("align.pretrain.run", "PretrainConfig"),
    "recipes/sft.py": ("align.sft.run", "SFTRecipeConfig"),
    "recipes/ufrm.py": ("rm.ufrm", "UFRMConfig"),
}


#: Overrides a GPU config needs to load on a machine without CUDA: TRL's ``SFTConfig`` refuses
#: ``bf16: true`` there when the config is built (every other field is still checked).
CPU_OVERRIDES = {"recipes/sft.py": ["--bf16", "false"]}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------ extraction


@dataclass(frozen=True)
class CommandLine:
    """One command of a README code block: ``text`` as written (continuations joined, comment
    dropped) and ``lineno``, the README line it starts on (1-based)."""

    text: str
    lineno: int
    doc: str = "README.md"  # the markdown file, relative to the repository root

    @property
    def words(self) -> list[str]:
        """The shell words (quotes removed), leading ``VAR=value`` assignments dropped."""
        words = shlex.split(self.text)
        while words and ASSIGNMENT.match(words[0]):
            words.pop(0)
        return words

    @property
    def raw_words(self) -> list[str]:
        """The shell words with their quotes kept (a quoted word is a value, never a marker)."""
        words = shlex.split(self.text, posix=False)
        while words and ASSIGNMENT.match(words[0]):
            words.pop(0)
        return words

    def is_synopsis(self) -> bool:
        """Whether the line shows a form rather than a command: ``[--opt X]``, ``a|b``, ``...``
        or an UPPERCASE placeholder outside quotes."""
        for word in self.raw_words:
            if word[:1] in "'\"":
                continue
            if any(mark in word for mark in ("[", "]", "|", "...")) or PLACEHOLDER.match(word):
                return True
        return False

    def root_options(self) -> list[str]:
        """The options before the first subcommand word (``align --verbose ppo``)."""
        found = []
        for word in self.raw_words[1:]:
            if not word.startswith("--"):
                break
            found.append(word.split("=")[0])
        return found

    def options(self) -> list[str]:
        """The ``--options`` the line names (outside quoted values), in order, once each."""
        found = []
        for word in self.raw_words:
            match = OPTION.match(word) if word[:1] not in "'\"" else None
            if match and match.group(1).split("=")[0] not in found:
                found.append(match.group(1).split("=")[0])
        return found


def fenced_blocks(markdown: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, lines)`` of every fenced code block (```` ``` ````)."""
    block: list[str] | None = None
    start = 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if block is None:
                block, start = [], number + 1
            else:
                yield start, block
                block = None
        elif block is not None:
            block.append(line)


def strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` at a word start, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def block_commands(start: int, lines: list[str]) -> Iterator[CommandLine]:
    """The commands of one code block: a line ending in ``\\`` continues on the next, and so
    does an indented line after a command (the README's wrapped synopses)."""
    current: list[str] = []
    first = start
    open_continuation = False
    for offset, line in enumerate(lines):
        text = strip_comment(line)
        continues = open_continuation or (current and line[:1].isspace() and text.strip())
        if current and not continues:
            yield CommandLine(" ".join(current), first)
            current = []
        if not text.strip():
            open_continuation = False
            continue
        if not current:
            first = start + offset
        open_continuation = text.endswith("\\")
        current.append(text.removesuffix("\\").strip())
    if current:
        yield CommandLine(" ".join(current), first)


def inline_commands(markdown: str) -> Iterator[CommandLine]:
    """The inline code spans outside the fenced blocks (a span may wrap onto the next line)."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            line = ""
        lines.append("" if fenced else line)
    text = "\n".join(lines)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        lineno = text.count("\n", 0, match.start()) + 1
        yield CommandLine(" ".join(match.group(1).split()), lineno)


def commands(markdown: str, program: str) -> list[CommandLine]:
    """Every command of ``markdown`` that runs ``program`` (``"align"``, ``"accelerate
    launch"``, ``"make"``), after any ``VAR=value`` prefix: the lines of the fenced code blocks,
    then the inline code spans that hold more than the program's name."""
    runs = re.compile(rf"^(?:[A-Za-z_]\w*=\S*\s+)*{re.escape(program)}\s+\S")
    found = []
    for start, lines in fenced_blocks(markdown):
        found += [c for c in block_commands(start, lines) if runs.match(c.text)]
    return found + [c for c in inline_commands(markdown) if runs.match(c.text)]


def distinct(found: list[CommandLine]) -> list[CommandLine]:
    """``found`` with repeated lines left out (the first occurrence kept)."""
    seen: dict[str, CommandLine] = {}
    for command in found:
        seen.setdefault(command.text, command)
    return list(seen.values())


# ------------------------------------------------------------------ running align in-process


@contextlib.contextmanager
def repository_root() -> Iterator[None]:
    """Run from the repository root, where the README's relative paths resolve."""
    before = Path.cwd()
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(before)


def align(args: list[str]) -> tuple[int, str, str]:
    """``align ARGS`` through :func:`align.cli.app.main`: (exit status, stdout, stderr). Old
    spellings are warned about afresh on every call."""
    from align.cli.app import main
    from align.core import config

    out, err = io.StringIO(), io.StringIO()
    warned, config._warned = config._warned, set()
    try:
        with repository_root(), warnings.catch_warnings():
            warnings.simplefilter("always")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main(args)
                except SystemExit as done:
                    code = done.code
                else:
                    code = 0
    finally:
        config._warned = warned
    return (0 if code is None else code), out.getvalue(), err.getvalue()


def command_words(args: list[str]) -> tuple[list[str], object]:
    """The subcommand words at the start of ``args`` (root options like ``--verbose`` skipped)
    and the click command they reach."""
    from align.cli.app import cli

    command, words = cli(), []
    for word in args:
        if word.startswith("-"):
            if words:
                break
            continue  # a root option: --verbose, --help, --version
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command, words = sub, [*words, word]
    return words, command


_HELP: dict[tuple[str, ...], str] = {}


def help_text(words: list[str]) -> str:
    """``align WORDS --help`` (asserted to exit 0), cached per command."""
    key = tuple(words)
    if key not in _HELP:
        code, out, err = align([*words, "--help"])
        assert code == 0, f"align {' '.join(words)} --help: exit {code}\n{err}"
        _HELP[key] = out
    return _HELP[key]


def listed(help_out: str, option: str) -> bool:
    """Whether the help output ``help_out`` lists ``option`` as an option: at the start of one of
    its rows (a mention in a description does not count; ``--rollout`` is not
    ``--rollout.engine``)."""
    row = rf"^[\s│*]*{re.escape(option)}(?![\w.\-])"
    return re.search(row, help_out, flags=re.MULTILINE) is not None


def check_align_line(command: CommandLine) -> None:
    """Assert that the CLI accepts the README line ``command`` (see the module docstring)."""
    where = f"{command.doc}:{command.lineno}: {command.text}"
    args = command.words[1:]
    words, click_command = command_words(args)
    root = command.root_options()
    for option in command.options():
        on = [] if option in root else words
        assert listed(help_text(on), option), (
            f"{where}\n{option} is not an option of `align {' '.join(on)}` (see its --help)"
        )
    if command.is_synopsis() or not hasattr(click_command, "config_class"):
        return
    if "--help" in args or "--version" in args or len(args) == len(words):
        return  # help and version lines; a command named in prose (`align eval gsb`)
    code, out, err = align([*args, "--show_config"])
    assert code == 0, f"{where}\n--show_config: exit {code}\n{err}"
    assert "old spelling" not in err, f"{where}\n{err}"
    assert out.strip(), f"{where}\n--show_config printed nothing"


# ------------------------------------------------------------------ accelerate launch lines


def launch_parts(command: CommandLine) -> tuple[object, str, list[str]]:
    """accelerate's parsed options, the recipe path and the recipe's arguments."""
    from accelerate.commands.launch import launch_command_parser

    parsed = launch_command_parser().parse_args(command.words[2:])
    return parsed, parsed.training_script, list(parsed.training_script_args)


def check_launch_line(command: CommandLine) -> None:
    """Assert that accelerate parses the line, its files exist, and the recipe's config class
    loads the config with the overrides."""
    import importlib

    where = f"{command.doc}:{command.lineno}: {command.text}"
    parsed, recipe, recipe_args = launch_parts(command)
    assert recipe in RECIPE_CONFIGS, f"{where}\nunknown recipe {recipe}"
    assert (REPO / recipe).is_file(), f"{where}\n{recipe} does not exist"
    if parsed.config_file:
        assert (REPO / parsed.config_file).is_file(), f"{where}\n{parsed.config_file} missing"
    module, name = RECIPE_CONFIGS[recipe]
    assert f"import {name}" in (REPO / recipe).read_text(encoding="utf-8"), (
        f"{recipe} no longer builds a {name}: update RECIPE_CONFIGS"
    )
    config, overrides = None, []
    rest = list(recipe_args)
    while rest:
        word = rest.pop(0)
        if word == "--config":
            config = rest.pop(0)
        elif word != "--verbose":
            overrides.append(word)
    if command.is_synopsis():
        return  # `--config ...`: the form of a command, not one
    if config is not None and not config.replace("_", "").isalnum():
        assert (REPO / config).is_file(), f"{where}\n{config} does not exist"
    if not _has_cuda():
        overrides += CPU_OVERRIDES.get(recipe, [])
    cls = getattr(importlib.import_module(module), name)
    from align.core import config as C

    warned, C._warned = C._warned, set()
    try:
        with repository_root(), warnings.catch_warnings():
            warnings.simplefilter("error", C.ConfigWarning)  # an old spelling fails
            cls.from_sources(config, overrides)
    except Exception as error:  # noqa: BLE001 - reported with the line
        raise AssertionError(f"{where}\n{type(error).__name__}: {error}") from None
    finally:
        C._warned = warned


# ------------------------------------------------------------------ files and Python names

#: A repository file the README names: ``align/tiny/world.py``, ``recipes/configs/x.yaml``.
FILE_PATH = re.compile(
    r"(?<![\w/~.<>-])((?:align|rm|rollouts|eval|recipes|bench|tests|docs)/[\w/.\-]*\.(?:py|yaml|md))\b"
)
#: A repository folder the README names in code: ``align/core/``, ``tests/unit/``.
FOLDER_PATH = re.compile(r"`((?:align|recipes|tests|docs)/(?:[\w\-]+/)*)`")
#: A Python name the README names: ``align.core.data``, ``align.tiny.reward:tiny_world_reward``.
PYTHON_NAME = re.compile(r"(?<![\w./<>-])((?:align|rm|rollouts|eval)(?:\.\w+)+(?::\w+)?)")
NOT_PYTHON = ("json", "jsonl", "md", "yaml", "png", "csv")
#: ``from X import a, b`` in the README's Python examples.
FROM_IMPORT = re.compile(r"^from ((?:align|rm|rollouts|eval)[\w.]*) import ([\w, ]+)$", re.M)


def module_file(parts: list[str]) -> Path | None:
    """The source file of the module ``parts`` (``["align", "core", "data"]``), if it exists."""
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level (without importing it)."""
    import ast

    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def python_name_exists(name: str) -> bool:
    """Whether ``pkg.module[.attr]`` / ``pkg.module:attr`` names a module of the repository and,
    after it, something the module defines (checked in its source, nothing is imported)."""
    parts = name.replace(":", ".").split(".")
    for end in range(len(parts), 0, -1):
        path = module_file(parts[:end])
        if path is not None:
            rest = parts[end:]
            return not rest or rest[0] in top_level_names(path)
    return False


# ------------------------------------------------------------------ the tests

#: The README and the guides of docs/ (config.md is generated from the code and holds no
#: commands); each command is checked where it is written.
DOCUMENTS = [README, *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "config.md")]
TEXTS = {p.relative_to(REPO).as_posix(): p.read_text(encoding="utf-8") for p in DOCUMENTS}
MARKDOWN = TEXTS["README.md"]
ALL_MARKDOWN = "\n".join(TEXTS.values())


def documented(program: str) -> list[CommandLine]:
    """The distinct ``program`` commands of every document, each knowing its file."""
    found = [
        dataclasses.replace(c, doc=name)
        for name, text in TEXTS.items()
        for c in commands(text, program)
    ]
    return distinct(found)


ALIGN_LINES = documented("align")
LAUNCH_LINES = documented("accelerate launch")
MAKE_LINES = documented("make")


def test_the_extraction_finds_the_readme_commands():
    texts = {c.text for c in ALIGN_LINES}
    assert len(ALIGN_LINES) >= 30 and len(LAUNCH_LINES) >= 8
    assert "align ppo --config tiny" in texts and "align --help" in texts
    assert {c.words[1] for c in MAKE_LINES} >= {"demo", "test"}


def test_extraction_joins_continuations_and_drops_comments():
    markdown = (
        "text\n```bash\n"
        "align ppo --config tiny   # a comment\n"
        "align filter --prompts p.jsonl \\\n"
        "    --rewards '{type: rule, rule: length}' --n 8  # sample\n"
        "echo not align\n"
        "X=1 align eval gsb --candidate DIR\n"
        "```\n"
        "```\n"
        "align rm serve --model m [--port 8000]\n"
        "               [--token T]\n"
        "```\n"
    )
    found = commands(markdown, "align")
    assert [c.text for c in found] == [
        "align ppo --config tiny",
        "align filter --prompts p.jsonl --rewards '{type: rule, rule: length}' --n 8",
        "X=1 align eval gsb --candidate DIR",
        "align rm serve --model m [--port 8000] [--token T]",
    ]
    assert [c.lineno for c in found] == [3, 4, 7, 10]
    assert [c.is_synopsis() for c in found] == [False, False, True, True]
    assert found[1].options() == ["--prompts", "--rewards", "--n"]
    assert found[1].words[-3] == "{type: rule, rule: length}"
    assert found[3].options() == ["--model", "--port", "--token"]


def test_every_file_and_folder_the_readme_names_exists():
    files = set(FILE_PATH.findall(ALL_MARKDOWN))
    folders = set(FOLDER_PATH.findall(ALL_MARKDOWN))
    assert {"align/tiny/world.py", "docs/architecture.md"} <= files and "align/core/" in folders
    missing = sorted(p for p in files | folders if not (REPO / p).exists())
    assert not missing, f"README.md or docs/ name files that do not exist: {missing}"


def test_every_python_name_the_readme_names_exists():
    names = {n for n in PYTHON_NAME.findall(ALL_MARKDOWN) if n.rsplit(".", 1)[-1] not in NOT_PYTHON}
    for module, imported in FROM_IMPORT.findall(ALL_MARKDOWN):
        names.update(f"{module}:{name.strip()}" for name in imported.split(","))
    assert {"align.core.data", "align.tiny.reward:tiny_world_reward"} <= names
    assert "align.filter.run:run_filter" in names
    missing = sorted(n for n in names if not python_name_exists(n))
    assert not missing, f"README.md or docs/ name Python names that do not exist: {missing}"
    assert not python_name_exists("align.ppo_run") and not python_name_exists("align.core.nothing")
    assert not python_name_exists("align.core.answers:no_such_function")


@pytest.mark.parametrize("command", ALIGN_LINES, ids=lambda c: f"{c.doc}:L{c.lineno}")
def test_readme_align_line_is_accepted(command):
    check_align_line(command)


@pytest.mark.parametrize("command", LAUNCH_LINES, ids=lambda c: f"{c.doc}:L{c.lineno}")
def test_readme_accelerate_line_loads_its_config(command):
    check_launch_line(command)


@pytest.mark.parametrize("command", MAKE_LINES, ids=lambda c: f"{c.doc}:L{c.lineno}")
def test_readme_make_line_names_a_target(command):
    done = subprocess.run(
        ["make", "-n", *command.words[1:]], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{command.doc}:{command.lineno}: {command.text}\n{done.stderr}"


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("--rollout.engine vllm", "--rollout_engine_typo vllm"),  # rejected by the CLI
        ("--rollout.engine vllm", "--rollout_engine vllm"),  # an old spelling (warns)
        ("--config tiny --show_config", "--config tiny --show-confg"),  # in a synopsis line
    ],
)
def plant(program: str, good: str, bad: str) -> CommandLine:
    """A copy of the document holding the first ``program`` command with ``good``, with ``good``
    replaced by ``bad`` there: that command, as extracted from the copy."""
    first = next(c for c in documented(program) if good in c.text)
    lines = TEXTS[first.doc].splitlines()
    for i in range(first.lineno - 1, len(lines)):
        if good in lines[i]:
            lines[i] = lines[i].replace(good, bad, 1)
            break
    planted = [c for c in commands("\n".join(lines), program) if bad in c.text]
    assert [c.lineno for c in planted] == [first.lineno]
    return dataclasses.replace(planted[0], doc=first.doc)


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("--rollout.engine vllm", "--rollout_engine_typo vllm"),  # rejected by the CLI
        ("--rollout.engine vllm", "--rollout_engine vllm"),  # an old spelling (warns)
        ("--rollout.engine vllm", "--rollout-engine vllm"),  # dashes: read, but not the spelling
        ("--config tiny --show_config", "--config tiny --show-confg"),
        ("--shots 0|5", "--shot 0|5"),  # in a synopsis line
    ],
)
def test_a_misspelled_option_in_a_readme_copy_fails(good, bad):
    """The check can fail: plant a misspelling in a copy of the README."""
    line = plant("align", good, bad)
    with pytest.raises(AssertionError, match=re.escape(bad.split()[0])):
        check_align_line(line)


def test_the_cli_itself_rejects_the_planted_typo():
    """Not only the help check: ``--show_config`` refuses the typo too (exit 2, one line)."""
    code, _, err = align(["ppo", "--config", "tiny", "--rollout_engine_typo", "vllm",
                          "--show_config"])  # fmt: skip
    assert code == 2 and err.startswith("error: unknown field 'rollout_engine_typo'"), err


def test_a_misspelled_override_in_a_launch_line_fails():
    line = plant("accelerate launch", "--stage_documents 40", "--stage_documnets 40")
    with pytest.raises(AssertionError, match="stage_documnets"):
        check_launch_line(line)
