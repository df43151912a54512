"""``ChatConfig``: the options of ``align chat`` (defaults and help live only here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from align.core.config import check_literals, check_ranges, help_field


@dataclass
class ChatConfig:
    """``align chat``: talk to a model directory, one turn at a time."""

    model: str = field(metadata={"help": "Model directory (safetensors, with its tokenizer)."})
    chat_format: Literal["xuanyuan", "xuanyuan-6b", "ziya2", "hf"] | None = help_field(
        "Chat format: xuanyuan, xuanyuan-6b, ziya2, or hf (the tokenizer's own template); "
        "none = the tokenizer's own template, an error when it has none.",
        None,
    )
    engine: Literal["hf", "vllm"] = help_field(
        "hf: transformers generate, streaming tokens as they come; vllm: an in-process vLLM "
        "engine, which prints each answer when it is done (no token streaming).",
        "hf",
    )
    system: str | None = help_field("System message to start with (/system TEXT changes it).")
    max_new_tokens: int = help_field("Most tokens per answer.", 256, ge=1)
    temperature: float = help_field("Sampling temperature; 0 = greedy.", 0.7, ge=0)
    top_p: float = help_field("Nucleus sampling: the top tokens of this mass.", 1.0, gt=0, le=1)
    top_k: int = help_field("Sample among the k likeliest tokens; 0 = all.", 0, ge=0)
    seed: int | None = help_field("Random seed of the sampling; none = not seeded.", None)
    max_context: int | None = help_field(
        "Tokens the prompt plus max_new_tokens may take; the oldest turns are dropped to fit. "
        "none = the model's max_position_embeddings.",
        None,
        ge=2,
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = help_field(
        "Load dtype; none = the checkpoint's (hf engine) or vLLM's auto.", None
    )
    device: str = help_field("Device of the hf engine: auto (cuda when there is one), cpu, cuda.",
                             "auto")  # fmt: skip
    input: str | None = help_field(
        "Non-interactive: a file of user turns (one per line; .jsonl/.json: objects with "
        "'content'); lines starting with / are commands, as at the prompt.",
        None,
    )
    output: str | None = help_field(
        "Non-interactive: where the JSONL transcript goes (one object per turn: the answer, "
        "the prompt's length in tokens, turns dropped); none = stdout.",
        None,
    )
    show_prompt: bool = help_field(
        "Print each turn's rendered prompt (as a JSON string) before its answer.", False
    )

    def __post_init__(self) -> None:
        check_ranges(self)
        check_literals(self)
        if self.output is not None and self.input is None:
            raise ValueError("output: only with input (the non-interactive mode)")
