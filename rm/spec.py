"""``RewardSpec``: one reward source of a weighted sum, as it is written in a config's
``rewards:`` list (PPO, the filter, PEI's judge, ``align eval gsb``) and built by
:func:`rm.functions.rewards_from_config`.

Every entry has a ``type`` and the options of that type; the others stay unset (``null``). An
unset option takes the source's own default (e.g. a reward model's ``batch_size`` 16, a reward
server's 64). On the command line an entry may also be written short (:meth:`RewardSpec.from_text`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import yaml

from align.core.config import ConfigError, build, check_range, help_field, parse_yaml
from rm.errors import RewardError

TYPES = ("http", "model", "python", "rule")
COMMON = ("type", "weight", "name", "on_invalid", "normalize")
#: The options of each type (besides the common ones).
OPTIONS = {
    "python": ("fn",),
    "model": ("path", "chat_format", "batch_size", "max_length", "trust_remote_code"),
    "http": (
        "url", "token", "token_env", "batch_size", "timeout", "retries", "backoff", "columns",
        "protocol", "chat_format", "tokenizer", "label_column",
    ),
    "rule": ("rule", "max_chars", "min_chars", "coef", "pattern", "penalty"),
}
REQUIRED = {"python": "fn", "model": "path", "http": "url", "rule": "rule"}
REQUIRED_HELP = {
    "python": "'package.module:function' or 'path/to/file.py:function'",
    "model": "a reward model directory",
    "http": "the reward server's URL, e.g. http://127.0.0.1:8000/score",
    "rule": "one of tiny, mcq, length, format",
}
RULE_NAMES = ("tiny", "mcq")
TINY_REWARD = "align.tiny.reward:tiny_world_reward"


@dataclass
class RewardSpec:
    """One reward source: ``{type: python, fn}``, ``{type: model, path}``, ``{type: http,
    url}`` or ``{type: rule, rule}``, with its weight and options."""

    config_omit_defaults: ClassVar[bool] = True  # printed with the fields it sets only

    type: Literal["http", "model", "python", "rule"] | None = help_field(
        "Source: python (a function), model (a local reward model), http (a reward server) or "
        "rule (tiny, mcq, length, format)."
    )
    weight: float = help_field("Weight in the sum.", 1.0)
    name: str | None = help_field(
        "Name of the logged reward/<name> metric (unique); none = the source's name."
    )
    on_invalid: Literal["error", "drop"] | None = help_field(
        "A None/NaN/inf score: error, or drop the sample (counted); none = the command's default "
        "(error in ppo and eval, drop in filter)."
    )
    normalize: bool | Literal["stored", "batch"] = help_field(
        "batch: z-score this component over the batch before weighting; model only: true or "
        "stored z-scores with the model's score_stats.json.",
        False,
    )
    fn: str | None = help_field("python: 'package.module:function' or 'path/file.py:function'.")
    path: str | None = help_field("model: reward model directory (HF format, safetensors).")
    chat_format: str | None = help_field(
        "model: chat format it reads; none = hf. http openrlhf: format its queries are rendered "
        "in; none = the text prompt and answer joined."
    )
    batch_size: int | None = help_field("model, http: samples per call; none = 16 / 64.")
    max_length: int | None = help_field("model: tokens kept per sample; none = 1024.")
    trust_remote_code: bool | None = help_field("model: run the directory's code; none = false.")
    url: str | None = help_field("http: the reward server's /score URL.")
    token: str | None = help_field("http: bearer token (prefer token_env).")
    token_env: str | None = help_field("http: environment variable holding the token.")
    timeout: float | None = help_field("http: seconds per request; none = 60.")
    retries: int | None = help_field("http: retries of a failed request; none = 3.")
    backoff: float | None = help_field("http: seconds before the first retry; none = 0.5.")
    columns: list[str] | None = help_field("http: dataset columns sent as metadata.")
    protocol: Literal["align", "openrlhf"] | None = help_field(
        "http: align ({prompts, completions} → {scores}, /score) or openrlhf ({query, prompts, "
        "labels} → {rewards}, e.g. /get_reward); none = align."
    )
    tokenizer: str | None = help_field(
        "http openrlhf: tokenizer directory whose chat template renders queries (chat_format hf)."
    )
    label_column: str | None = help_field("http openrlhf: dataset column sent as labels.")
    rule: str | None = help_field("rule: tiny, mcq, length or format.")
    max_chars: int | None = help_field("rule length: longest answer without penalty.")
    min_chars: int | None = help_field("rule length: shortest answer without penalty; none = 0.")
    coef: float | None = help_field("rule length: penalty per character outside; none = 0.01.")
    pattern: str | None = help_field("rule format: regular expression an answer must match.")
    penalty: float | None = help_field("rule format: penalty when it does not; none = 1.")

    def __post_init__(self) -> None:
        if self.type is None:
            raise ValueError(f"type: missing; expected one of {list(TYPES)}")
        if self.type not in TYPES:
            raise ValueError(f"type: expected one of {list(TYPES)}, got {self.type!r}")
        allowed = set(COMMON) | set(OPTIONS[self.type])
        stray = [k for k, v in self.options(all_types=True).items() if k not in allowed]
        if stray:
            raise ValueError(
                f"{stray[0]}: not an option of type {self.type} (its options: "
                f"{', '.join(OPTIONS[self.type])})"
            )
        required = REQUIRED[self.type]
        if getattr(self, required) in (None, ""):
            raise ValueError(
                f"{required}: required for type {self.type} ({REQUIRED_HELP[self.type]})"
            )
        self._check_values()

    def _check_values(self) -> None:
        normalize = (False, True, "stored", "batch") if self.type == "model" else (False, "batch")
        if self.normalize not in normalize or (self.normalize is True and self.type != "model"):
            raise ValueError(
                f"normalize: expected one of {normalize} for type {self.type}, "
                f"got {self.normalize!r}"
            )
        if self.on_invalid not in (None, "error", "drop"):
            raise ValueError(f"on_invalid: expected error or drop, got {self.on_invalid!r}")
        for name in ("batch_size", "max_length"):
            check_range(name, getattr(self, name), ge=1)
        for name in ("retries", "backoff", "min_chars", "max_chars", "coef", "penalty"):
            check_range(name, getattr(self, name), ge=0)
        check_range("timeout", self.timeout, gt=0)
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http:// or https://, got {self.url!r}")

    def options(self, all_types: bool = False) -> dict:
        """The set (non-null) type options, e.g. ``{"path": ..., "batch_size": 8}``."""
        names = [f.name for f in dataclasses.fields(self) if f.name not in COMMON]
        if not all_types:
            names = [n for n in names if n in OPTIONS[self.type]]
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def describe(self, k: int) -> str:
        """``"rewards[0]: type rule, rule 'tiny'"``, where it was configured (for errors)."""
        required = REQUIRED[self.type]
        return f"rewards[{k}]: type {self.type}, {required} {str(getattr(self, required))!r}"

    @classmethod
    def from_text(cls, text: str) -> list[dict]:
        """Entries from one command-line value: a YAML mapping or list (``'{type: model, path:
        rm/}'``), a YAML file holding a list (or a mapping with a ``rewards:`` list), ``tiny`` or
        ``mcq`` (rules), ``rule:NAME``, an ``http(s)://`` URL (a reward server), an existing
        directory (a reward model), or ``pkg.module:function`` / ``file.py:function``."""
        text = text.strip()
        if text.startswith(("{", "[")):
            loaded = yaml.safe_load(text)
            return loaded if isinstance(loaded, list) else [loaded]
        if text.endswith((".yaml", ".yml")):
            if not Path(text).is_file():
                raise FileNotFoundError(f"reward {text!r}: no such YAML file of reward entries")
            loaded = parse_yaml(Path(text).read_text(encoding="utf-8"), text)
            loaded = loaded.get("rewards") if isinstance(loaded, dict) else loaded
            if not isinstance(loaded, list):
                raise ValueError(f"{text}: expected a list of reward entries or a rewards: list")
            return loaded
        if text in RULE_NAMES or text.startswith("rule:"):
            return [{"type": "rule", "rule": text.removeprefix("rule:")}]
        if text.startswith(("http://", "https://")):
            return [{"type": "http", "url": text}]
        if Path(text).is_dir():
            return [{"type": "model", "path": text}]
        if ":" in text:
            return [{"type": "python", "fn": text}]
        raise ValueError(
            f"reward {text!r}: expected a reward model directory, an http(s) URL, "
            "'module:function', 'file.py:function', tiny, mcq, rule:NAME, a YAML file or a YAML "
            "mapping {type: ..., ...}"
        )


def as_spec(k: int, entry: RewardSpec | Mapping, field: str = "rewards") -> RewardSpec:
    """A :class:`RewardSpec` from an entry (a mapping is checked field by field); mistakes are
    a :class:`~rm.errors.RewardError` naming ``field[k]`` and the field."""
    if isinstance(entry, RewardSpec):
        return entry
    if not isinstance(entry, Mapping):
        raise RewardError(
            f"{field}[{k}]: expected a mapping such as {{type: python, fn: 'pkg.mod:f'}}, "
            f"got {entry!r}"
        )
    try:
        return build(RewardSpec, entry, f"{field}[{k}]")
    except ConfigError as err:
        raise RewardError(str(err)) from None


def as_specs(entries: Sequence[RewardSpec | Mapping], field: str = "rewards") -> list[RewardSpec]:
    """Entries given in code as mappings (or a single mapping) → :class:`RewardSpec` list."""
    if isinstance(entries, Mapping | RewardSpec):
        entries = [entries]
    if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
        raise RewardError(
            f"{field}: expected a list of mappings such as [{{type: python, fn: 'pkg.mod:f'}}], "
            f"got {entries!r}"
        )
    return [as_spec(k, e, field) for k, e in enumerate(entries)]


#: What a ``rewards`` field takes, for the error when one is required and missing.
REWARDS_EXPECTED = (
    "a reward model directory, an http(s) URL, 'module:function', 'file.py:function', a rule "
    "(tiny, mcq, rule:NAME), a YAML file of entries or a mapping {type: ..., ...}"
)


def tiny_reward() -> list[RewardSpec]:
    """The tiny world's rule as a Python reward: what PPO's rewards and PEI's judge are when the
    tiny world fills in (no model path given); never a default once a model path is given."""
    return [RewardSpec(type="python", fn=TINY_REWARD)]


def tiny_rule() -> list[RewardSpec]:
    """The tiny world's rule as a rule source: the filter's rewards when the tiny world fills
    in (no policy given)."""
    return [RewardSpec(type="rule", rule="tiny")]
