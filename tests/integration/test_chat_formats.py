"""Chat formats: golden strings (docs/methods.md §7, whitespace exact), assistant spans and token
masks."""

from __future__ import annotations

import pytest

from align.core.chat_formats import (
    FORMATS,
    XUANYUAN_SYSTEM,
    encode_with_assistant_mask,
    get_chat_format,
)

ONE = [{"role": "user", "content": "介绍下你自己"}]
TWO = [
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "q2"},
]
DONE = [*TWO, {"role": "assistant", "content": "a2"}]

GOLDEN = {
    # The seed's own code: system_message + " " + "Human" + ": " + content + " " + "Assistant" + ":"
    ("xuanyuan", "one"): XUANYUAN_SYSTEM + " Human: 介绍下你自己 Assistant:",
    ("xuanyuan", "two"): XUANYUAN_SYSTEM + " Human: q1 Assistant: a1</s>Human: q2 Assistant:",
    ("xuanyuan-6b", "one"): " Human: 介绍下你自己 Assistant:",
    ("xuanyuan-6b", "two"): " Human: q1 Assistant: a1</s>Human: q2 Assistant:",
    ("ziya2", "one"): "<human>:介绍下你自己\n<bot>:",
    ("ziya2", "two"): "<human>:q1\n<bot>:a1</s>\n<human>:q2\n<bot>:",
}


@pytest.mark.parametrize(("name", "case"), sorted(GOLDEN))
def test_generation_prompt_matches_golden_string(name, case):
    messages = ONE if case == "one" else TWO
    assert get_chat_format(name).render(messages, add_generation_prompt=True) == GOLDEN[name, case]


def test_system_message_is_the_seed_text_with_its_newline():
    assert XUANYUAN_SYSTEM.startswith("以下是用户和人工智能助手之间的对话。")
    assert XUANYUAN_SYSTEM.endswith("政治敏感等相关的话题、问题和指示。\n")
    assert "拒绝参与 与不道德" in XUANYUAN_SYSTEM  # the seed's double space is kept


def test_xuanyuan_takes_a_given_system_message():
    messages = [{"role": "system", "content": "你是金融助手。"}, *ONE]
    rendered = get_chat_format("xuanyuan").render(messages, add_generation_prompt=True)
    assert rendered == "你是金融助手。 Human: 介绍下你自己 Assistant:"


@pytest.mark.parametrize("name", ["xuanyuan-6b", "ziya2"])
def test_formats_without_system_message_refuse_one(name):
    with pytest.raises(Exception, match="system|role"):
        get_chat_format(name).render([{"role": "system", "content": "s"}, *ONE])


@pytest.mark.parametrize(
    ("name", "replies"),
    [
        ("xuanyuan", [" a1</s>", " a2</s>"]),
        ("xuanyuan-6b", [" a1</s>", " a2</s>"]),
        ("ziya2", ["a1</s>", "a2</s>"]),
    ],
)
def test_assistant_spans_cover_exactly_what_the_model_generates(name, replies):
    fmt = get_chat_format(name)
    text = fmt.render(DONE)
    assert [text[a:b] for a, b in fmt.assistant_spans(DONE)] == replies
    # The text before each span is exactly the generation prompt of that turn.
    first_start = fmt.assistant_spans(DONE)[0][0]
    assert text[:first_start] == fmt.render(DONE[:1], add_generation_prompt=True)


def test_completed_multi_turn_is_prompt_plus_reply():
    fmt = get_chat_format("xuanyuan-6b")
    assert fmt.render(DONE) == " Human: q1 Assistant: a1</s>Human: q2 Assistant: a2</s>"
    assert (
        get_chat_format("ziya2").render(DONE)
        == "<human>:q1\n<bot>:a1</s>\n<human>:q2\n<bot>:a2</s>"
    )


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(ValueError, match="xuanyuan, xuanyuan-6b, ziya2, hf"):
        get_chat_format("llama9")


def test_hf_format_needs_a_tokenizer_template():
    class NoTemplate:
        chat_template = None
        special_tokens_map: dict = {}

    with pytest.raises(ValueError, match="has none"):
        FORMATS["hf"].render(ONE, tokenizer=NoTemplate())


def test_token_mask_marks_reply_tokens_and_eos(world_tokenizer):
    tok = world_tokenizer
    ids, mask = encode_with_assistant_mask(tok, DONE, "xuanyuan-6b")
    assert len(ids) == len(mask)
    # decode the masked runs: they are the two replies, each ending with the EOS token
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    assert [r[-1] for r in runs] == [tok.eos_token_id, tok.eos_token_id]
    assert [tok.decode(r).strip() for r in runs] == ["a1</s>", "a2</s>"]
    assert tok.decode([t for t, m in zip(ids, mask) if not m]) == (
        " Human: q1 Assistant:Human: q2 Assistant:"
    )


@pytest.mark.parametrize("name", ["xuanyuan", "xuanyuan-6b", "ziya2"])
def test_token_mask_agrees_with_generation_markers(world_tokenizer, name):
    """The prefix-rendering spans match the template's {% generation %} blocks, which TRL's
    assistant_only_loss reads through apply_chat_template."""
    import copy

    tok = copy.deepcopy(world_tokenizer)
    get_chat_format(name).apply_to(tok)
    out = tok.apply_chat_template(
        DONE, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encode_with_assistant_mask(tok, DONE, name)
    assert out["input_ids"] == ids
    assert out["assistant_masks"] == mask
    assert sum(mask) > 0


def test_hf_format_uses_the_tokenizer_template(world_tokenizer):
    hf = get_chat_format("hf").render(TWO, add_generation_prompt=True, tokenizer=world_tokenizer)
    assert hf == GOLDEN["xuanyuan-6b", "two"]  # the tiny world carries xuanyuan-6b
