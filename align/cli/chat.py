"""``align chat --model DIR``: a multi-turn terminal chat (:mod:`align.chat`)."""

from __future__ import annotations

from align.cli.config_command import Invocation, config_command


def _chat_config() -> type:
    from align.chat.config import ChatConfig  # lazy: as the other commands' config classes

    return ChatConfig


def run_chat_command(cfg, invocation: Invocation) -> None:
    from align.chat.run import run_chat  # lazy: loads torch and transformers; keeps --help fast

    run_chat(cfg)


chat_command = config_command(
    "chat",
    _chat_config,
    run_chat_command,
    help="A multi-turn chat with a model directory at the terminal: tokens streamed as they come "
    "(engine hf; engine vllm prints each answer when done), the history truncated from the "
    "oldest turn to fit the context (saying so), /reset, /system TEXT, /save FILE; --input FILE "
    "answers a file of user turns into a JSONL transcript instead.",
)
