"""Commands generated from config dataclasses: every field is an option (``--name value``, dotted
for nested configs), ``--help`` lists each with its type, default, range and help, and every
command takes ``--config FILE.yaml`` and ``--show_config``.

A command line without ``--config`` that gives no model path starts from the class's shipped
tiny-world config (``config_tiny_base``; a one-line note on stderr says so): the tiny world
fills in the inputs, and its config the small lengths that suit it.

Spelling: field names with underscores (``--max_new_tokens``); dashes are read as underscores
(``--max-new-tokens``), and a class's old spellings (``config_renames``) still work with a
warning. Values are read as :func:`align.core.config.load_config` reads them. An unknown option
is a one-line error suggesting the closest field.

The config class is imported when the command runs or shows its help, not when ``align``
starts (TRL and transformers are slow to import).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import click

from align.core import config as C

BUILTINS = ("config", "show_config", "help")


@dataclasses.dataclass(frozen=True)
class Extra:
    """An option that is not a config field (``--num_processes``, ``--force``)."""

    name: str
    help: str
    type: Any = str
    default: Any = None
    is_flag: bool = False


#: ``--num_processes`` / ``--accelerate_config`` of the training commands.
LAUNCH_EXTRAS = (
    Extra("num_processes", "Re-launch through `accelerate launch` with this many processes.", int),
    Extra(
        "accelerate_config",
        "Re-launch through `accelerate launch --config_file FILE` (DDP, DeepSpeed).",
        click.Path(dir_okay=False),
    ),
)


@dataclasses.dataclass
class Invocation:
    """What a command's ``run(cfg, invocation)`` gets besides its config: the extra options'
    values and the command line to re-run it with (``argv``, e.g. under ``accelerate launch``)."""

    extras: dict[str, Any]
    argv: list[str]


def _param_name(field: str) -> str:
    return "f__" + field.replace(".", "__")


class ConfigCommand(click.Command):
    """A click command whose options are the fields of a config dataclass (built lazily)."""

    def __init__(
        self,
        name: str,
        load_class: Callable[[], type],
        run: Callable[[Any, Invocation], None],
        *,
        help: str,
        path: Sequence[str],
        extras: Sequence[Extra] = (),
        default_config: str | None = None,
        aliases: dict[str, list[str]] | None = None,
    ) -> None:
        self.load_class, self.run_config = load_class, run
        self.extras, self.path, self.default_config = tuple(extras), list(path), default_config
        self.aliases = aliases or {}
        self._fields: list[C.FieldDoc] | None = None
        config_help = "YAML config file (a path, or the name of a shipped config)"
        if default_config:
            config_help += f"; default: {default_config}"
        params = [
            click.Option(["--config"], type=str, default=None, help=config_help + "."),
            click.Option(
                ["--show_config"], is_flag=True, help="Print the resolved config (YAML) and exit."
            ),
        ]
        for extra in self.extras:
            params.append(
                click.Option(
                    [f"--{extra.name}"],
                    type=None if extra.is_flag else extra.type,
                    default=extra.default,
                    is_flag=extra.is_flag,
                    help=extra.help,
                )
            )
        short = help.split(". ")[0].removesuffix(".") + "."
        super().__init__(name, params=params, help=help, short_help=short)

    # ------------------------------------------------------------------ fields as options

    @property
    def config_class(self) -> type:
        return self.load_class()

    def field_rows(self) -> list[C.FieldDoc]:
        if self._fields is None:
            self._fields = C.field_docs(self.config_class)
            self.params.extend(self._field_option(row) for row in self._fields if row.option)
        return self._fields

    @staticmethod
    def _field_option(row: C.FieldDoc) -> click.Option:
        flag = {"is_flag": False, "flag_value": "true"} if row.bool_flag else {}
        return click.Option(
            [f"--{row.name}", _param_name(row.name)],
            type=str,
            default=None,
            multiple=row.is_list,
            help=row.help,
            **flag,  # a bool option alone means true
        )

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        self.field_rows()
        return super().get_params(ctx)

    # ------------------------------------------------------------------ parsing

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        self.field_rows()
        return super().parse_args(ctx, self.canonical_args(args))

    def canonical_args(self, args: Sequence[str]) -> list[str]:
        """``args`` with aliases expanded, dashes in option names read as underscores and old
        spellings renamed; an unknown option is a :class:`~align.core.config.ConfigError`."""
        out: list[str] = []
        plain = {*BUILTINS, *(e.name for e in self.extras)}
        args = list(args)
        while args:
            token = args.pop(0)
            if token == "--":
                out += [token, *args]
                break
            if token in self.aliases:
                out += self.aliases[token]
                continue
            if not token.startswith("--"):
                out.append(token)
                continue
            name, eq, value = token[2:].partition("=")
            name = name.replace("-", "_")
            if name not in plain:
                parts, _ = C.resolve_flag(self.config_class, name)  # renames; suggests
                name = ".".join(parts)
            if not eq and args and not args[0].startswith("--"):
                eq, value = "=", args.pop(0)  # joined: click reads "-1" as an option otherwise
                lists = {row.name for row in self.field_rows() if row.is_list}
                while name in lists and args and not args[0].startswith("--"):
                    out.append(f"--{name}={value}")  # --policies A B: one entry each
                    value = args.pop(0)
            out.append(f"--{name}{eq}{value}")
        return out

    # ------------------------------------------------------------------ running

    def invoke(self, ctx: click.Context) -> Any:
        params = ctx.params
        overrides: list[str] = []
        for row in self.field_rows():
            value = params.get(_param_name(row.name)) if row.option else None
            texts = value if isinstance(value, tuple) else () if value is None else (value,)
            for text in texts:
                overrides += [f"--{row.name}", text]
        config = params.get("config") or self.default_config
        cfg = C.load_config(self.config_class, config, overrides)
        if config is None and _tiny_base(cfg):
            config = _tiny_base(cfg)
            cfg = C.load_config(self.config_class, config, overrides)
            click.echo(
                f"note: no model path given: the tiny world, starting from the shipped config "
                f"'{config}' (--config FILE starts from another)",
                err=True,
            )
        if params.get("show_config"):
            click.echo(C.config_to_yaml(cfg), nl=False)
            return None
        extras = {e.name: params.get(e.name) for e in self.extras}
        argv = [*self.path, *(["--config", config] if config else []), *overrides]
        return self.run_config(cfg, Invocation(extras, argv))

    # ------------------------------------------------------------------ help

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        plain = [p.get_help_record(ctx) for p in self.get_params(ctx) if _is_plain(p)]
        with formatter.section("Options"):
            formatter.write_dl([r for r in plain if r])
        cls = self.config_class
        base = getattr(cls, "config_trl_base", None)
        base_names = {f.name for f in dataclasses.fields(base)} if base else set()
        for section, rows in _by_section(self.field_rows()):
            own = [r for r in rows if r.name not in base_names]
            if own:
                with formatter.section(_heading(cls, section)):
                    if section:
                        formatter.write_text(_plain_text(C.section_help(cls, section)))
                    formatter.write_dl([_row(r) for r in own])
        inherited = [r for r in self.field_rows() if r.name in base_names]
        if inherited:
            title = (
                f"{base.__name__} fields (TRL / transformers; every one is accepted, "
                "see their docs)"
            )
            with formatter.section(title):
                formatter.write_dl([_row(r) for r in inherited])


def _tiny_base(cfg: Any) -> str | None:
    """The shipped config a command line with no ``--config`` starts from when it gives no model
    path (``config_tiny_base`` of a class with ``uses_tiny_world()``): the tiny world's small
    lengths and learning rates, where the class's own defaults are for real models."""
    base = getattr(type(cfg), "config_tiny_base", None)
    return base if base is not None and cfg.uses_tiny_world() else None


def _is_plain(param: click.Parameter) -> bool:
    return not (param.name or "").startswith("f__")


def _by_section(rows: list[C.FieldDoc]) -> list[tuple[str, list[C.FieldDoc]]]:
    sections: dict[str, list[C.FieldDoc]] = {}
    for row in rows:
        sections.setdefault(row.section, []).append(row)
    return list(sections.items())


def _heading(cls: type, section: str) -> str:
    if not section:
        return f"{cls.__name__} fields"
    what = "each entry of the list" if section.endswith("[]") else "nested config"
    return f"{section} ({what})"


def _plain_text(text: str) -> str:
    """Docstring text for the terminal: ``code`` marks dropped."""
    return text.replace("``", "")


def _row(row: C.FieldDoc) -> tuple[str, str]:
    name = f"--{row.name} {row.type}" if row.option else f"{row.name} {row.type}"
    return name, f"{_plain_text(row.help)} [default: {row.default}]"


def config_command(
    name: str,
    load_class: Callable[[], type],
    run: Callable[[Any, Invocation], None],
    *,
    help: str,
    path: Sequence[str] | None = None,
    extras: Sequence[Extra] = (),
    default_config: str | None = None,
    aliases: dict[str, list[str]] | None = None,
) -> ConfigCommand:
    """The ``align`` command ``name`` (``path``: its words, e.g. ``["rm", "train"]``) for the
    config class ``load_class()``; ``run(cfg, invocation)`` does the work."""
    return ConfigCommand(
        name,
        load_class,
        run,
        help=help,
        path=path or [name],
        extras=extras,
        default_config=default_config,
        aliases=aliases,
    )
