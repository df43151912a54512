"""Chat formats carried as Jinja chat templates.

A format is a chat template. Engines and reward models only ever call ``apply_chat_template``;
this module supplies the templates of the XuanYuan and Ziya2 models (exact strings:
docs/methods.md §7) and finds which characters and tokens of a rendered conversation the
assistant wrote.
:func:`save_tokenizer` saves a tokenizer carrying a run's format as its chat template.

Rendered strings, ``q``/``a`` for user/assistant turns::

    xuanyuan     {system} Human: q1 Assistant: a1</s>Human: q2 Assistant:
    xuanyuan-6b   Human: q1 Assistant: a1</s>Human: q2 Assistant:
    ziya2        <human>:q1\\n<bot>:a1</s>\\n<human>:q2\\n<bot>:
    hf           whatever the tokenizer's own template renders

The assistant's span is what the model must generate after the generation prompt: `` a1</s>``
for the XuanYuan formats, ``a1</s>`` for Ziya2.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from transformers.utils.chat_template_utils import render_jinja_template

Message = dict[str, str]

XUANYUAN_SYSTEM = (
    "以下是用户和人工智能助手之间的对话。用户以Human开头，人工智能助手以Assistant开头，"
    "会对人类提出的问题给出有帮助、高质量、详细和礼貌的回答，并且总是拒绝参与 与不道德、不安全、"
    "有争议、政治敏感等相关的话题、问题和指示。\n"
)

_ROLE_ERROR = "{{ raise_exception('chat format %s: unsupported role ' + m['role']) }}"


def _human_assistant_template(name: str, default_system: str | None) -> str:
    """FastChat's ADD_COLON_TWO style, seps (" ", "</s>"), roles ("Human", "Assistant")."""
    if default_system is None:
        head = (
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            f"{{{{ raise_exception('chat format {name} has no system message') }}}}"
            "{%- endif -%}{%- set system = '' -%}{%- set turns = messages -%}"
        )
    else:
        head = (
            "{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
            f"{{%- else -%}}{{%- set system = {json.dumps(default_system)} -%}}"
            "{%- set turns = messages -%}{%- endif -%}"
        )
    return head + (
        "{{- system + ' ' -}}"
        "{%- for m in turns -%}"
        "{%- if m['role'] == 'user' -%}{{- 'Human: ' + m['content'] + ' ' -}}"
        "{%- elif m['role'] == 'assistant' -%}{{- 'Assistant:' -}}"
        "{%- generation -%}{{- ' ' + m['content'] + '</s>' -}}{%- endgeneration -%}"
        "{%- else -%}" + _ROLE_ERROR % name + "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
    )


ZIYA2_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- if m['role'] == 'user' -%}{{- '<human>:' + m['content'] -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- '<bot>:' -}}"
    "{%- generation -%}{{- m['content'] + '</s>' -}}{%- endgeneration -%}"
    "{%- else -%}" + _ROLE_ERROR % "ziya2" + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{%- if messages -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<bot>:' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class ChatFormat:
    """A named chat template; ``template=None`` means the tokenizer's own (``hf``)."""

    name: str
    template: str | None

    def resolve(self, tokenizer=None) -> str:
        """The Jinja template to render with."""
        if self.template is not None:
            return self.template
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            raise ValueError(
                f"chat format '{self.name}' uses the tokenizer's own chat template, "
                "but the tokenizer has none; pick one of " + ", ".join(FORMATS)
            )
        return template

    def render(
        self, messages: Sequence[Message], add_generation_prompt: bool = False, tokenizer=None
    ) -> str:
        """Render one conversation to text."""
        rendered, _ = render_jinja_template(
            [list(messages)],
            chat_template=self.resolve(tokenizer),
            add_generation_prompt=add_generation_prompt,
            **_special_tokens(tokenizer),
        )
        return rendered[0]

    def encode_prompt(
        self, messages: Sequence[Message], tokenizer, max_length: int
    ) -> tuple[list[int], bool]:
        """``(token ids, truncated)``: the conversation rendered up to the assistant's turn,
        left-truncated to ``max_length`` tokens (the end, where the answer starts, is kept)."""
        text = self.render(messages, add_generation_prompt=True, tokenizer=tokenizer)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-max_length:], len(ids) > max_length

    def assistant_spans(self, messages: Sequence[Message], tokenizer=None) -> list[tuple[int, int]]:
        """Character spans ``[start, end)`` of the assistant turns in ``render(messages)``.

        Found by rendering prefixes: the conversation up to an assistant turn (with the generation
        prompt) must be a prefix of the conversation that includes it; the difference is what the
        model generates. Works for any template that renders incrementally.
        """
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True, tokenizer=tokenizer)
            upto = self.render(messages[: i + 1], tokenizer=tokenizer)
            if not upto.startswith(before):
                raise ValueError(
                    f"chat format '{self.name}': rendering is not incremental at message {i}, "
                    "so assistant spans cannot be located"
                )
            spans.append((len(before), len(upto)))
        return spans

    def apply_to(self, tokenizer) -> None:
        """Make this format the tokenizer's chat template (no-op for ``hf``)."""
        if self.template is not None:
            tokenizer.chat_template = self.template


def save_tokenizer(tokenizer, directory, chat_format: str) -> None:
    """``tokenizer.save_pretrained(directory)`` with the run's ``chat_format`` made its chat
    template first (``hf`` keeps the tokenizer's own), so whoever loads the saved model renders
    conversations as the run did. Every tokenizer align saves goes through here (or, where a
    TRL trainer saves it, has the format applied when it is loaded)."""
    get_chat_format(chat_format).apply_to(tokenizer)
    tokenizer.save_pretrained(directory)


def _special_tokens(tokenizer) -> dict[str, str]:
    if tokenizer is None:
        return {}
    return {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}


FORMATS: dict[str, ChatFormat] = {
    "xuanyuan": ChatFormat("xuanyuan", _human_assistant_template("xuanyuan", XUANYUAN_SYSTEM)),
    "xuanyuan-6b": ChatFormat("xuanyuan-6b", _human_assistant_template("xuanyuan-6b", None)),
    "ziya2": ChatFormat("ziya2", ZIYA2_TEMPLATE),
    "hf": ChatFormat("hf", None),
}


def as_conversation(
    prompt: str | Sequence[Message], completion: str | Sequence[Message]
) -> list[Message]:
    """One conversation: the prompt's turns (a string is one user turn) followed by the
    completion's assistant turn(s) (a string is one assistant turn)."""
    head = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    tail = (
        [{"role": "assistant", "content": completion}]
        if isinstance(completion, str)
        else list(completion)
    )
    return head + tail


def get_chat_format(name: str) -> ChatFormat:
    """Look a format up by name; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown chat format '{name}'; expected one of: {', '.join(FORMATS)}"
        ) from None


def encode_with_assistant_mask(
    tokenizer, messages: Sequence[Message], chat_format: ChatFormat | str = "hf"
) -> tuple[list[int], list[int]]:
    """Tokenize a conversation and mark the tokens the assistant wrote.

    Returns ``(input_ids, assistant_mask)``, both of length T; ``mask[t] = 1`` when token t starts
    inside an assistant span. Needs a fast tokenizer (offset mapping). Special tokens are not added:
    the template carries them.
    """
    fmt = get_chat_format(chat_format) if isinstance(chat_format, str) else chat_format
    text = fmt.render(messages, tokenizer=tokenizer)
    spans = fmt.assistant_spans(messages, tokenizer=tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask
