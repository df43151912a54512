"""``align chat``: load a model directory, then talk to it at the terminal (tokens streamed as
they come, with the ``hf`` engine) or answer an ``--input`` file of user turns into a JSONL
transcript. The history lives in :class:`align.chat.session.Session`.

Commands at the prompt: ``/reset``, ``/system TEXT``, ``/save FILE``, ``/help``, ``/quit``
(Ctrl-D too). Ctrl-C while an answer streams stops it (the partial answer is kept).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from align.chat.config import ChatConfig
from align.chat.session import Session, read_turns
from align.core.chat_formats import ChatFormat, Message, get_chat_format
from align.core.models import check_model_dir, load_options, load_pretrained
from rollouts.base import SamplingParams

PROMPT = "you> "
ANSWER = "model> "
HELP = (
    "/reset: forget the conversation (the system message stays); /system TEXT: set the "
    "system message (/system alone shows it); /save FILE: write the conversation (.json: a "
    "list, else JSONL); /quit or Ctrl-D: leave"
)


@dataclass
class Answer:
    text: str
    new_tokens: int
    finish_reason: str  # stop, length, or interrupted


# --------------------------------------------------------------------------- set-up


def chat_format_of(name: str | None, tokenizer, model: str) -> ChatFormat:
    """The chat format to render with: ``name``, or the tokenizer's own template (``hf``);
    ``ValueError`` when none is given and the tokenizer has no template."""
    if name is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"model: {model}: the tokenizer has no chat template; pass --chat_format "
            "(xuanyuan, xuanyuan-6b or ziya2)"
        )
    fmt = get_chat_format(name or "hf")
    fmt.resolve(tokenizer)  # hf without a template: one line
    return fmt


def context_of(cfg: ChatConfig, model_dir: Path) -> int:
    """``max_context``, else the model's ``max_position_embeddings`` (else 2048)."""
    if cfg.max_context is not None:
        return cfg.max_context
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    return int(text.get("max_position_embeddings") or config.get("n_positions") or 2048)


def checkpoint_dtype(model_dir: Path) -> str:
    """The dtype ``config.json`` names (what the hf engine loads), else ``auto``: vLLM's own
    choice would be bfloat16 for a float32 checkpoint on a CPU."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "auto"


def sampling_of(cfg: ChatConfig) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        seed=cfg.seed,
    )


# --------------------------------------------------------------------------- generators


class _Stop(StoppingCriteria):
    """Stops generate() when the event is set (Ctrl-C while streaming)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


class HFGenerator:
    """transformers ``generate`` in a thread, its text streamed by ``TextIteratorStreamer``."""

    streams = True

    def __init__(self, cfg: ChatConfig, model_dir: Path, tokenizer) -> None:
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = (
            load_pretrained(AutoModelForCausalLM, model_dir, "model", **load_options(cfg.dtype))
            .to(device)
            .eval()
        )
        self.tokenizer, self.device = tokenizer, device
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"model: {model_dir}: the tokenizer has no eos_token")
        self.eos = eos
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    def _config(self, sampling: SamplingParams) -> GenerationConfig:
        warpers = {} if sampling.greedy else {
            "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
        }  # fmt: skip
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not sampling.greedy,
            pad_token_id=self.pad,
            eos_token_id=self.eos,
            **warpers,
        )

    def _run(self, ids: list[int], sampling: SamplingParams, streamer, stop, result) -> None:
        """generate() (in the worker thread): the output ids, or the error, into ``result``.
        The checkpoint's generation_config (repetition penalty, top_k=50) never applies: a
        neutral one stands in, as in rollouts.hf_generate."""
        input_ids = torch.tensor([ids], device=self.device)
        shipped = self.model.generation_config
        self.model.generation_config = GenerationConfig()
        try:
            with torch.no_grad():
                result["out"] = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=self._config(sampling),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Stop(stop)]),
                )
        except BaseException as error:  # raised again in the main thread
            result["error"] = error
            streamer.end()
        finally:
            self.model.generation_config = shipped

    def generate(self, ids: list[int], sampling: SamplingParams, emit: Callable[[str], None]):
        """Generate in a thread while the text streams to ``emit``; Ctrl-C stops it."""
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop, result = threading.Event(), {}
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        args = (ids, sampling, streamer, stop, result)
        thread = threading.Thread(target=self._run, args=args, daemon=True)
        thread.start()
        try:
            for piece in streamer:
                emit(piece)
        except KeyboardInterrupt:
            stop.set()
            for _ in streamer:  # drain what is left; generate stops at its next step
                pass
        _join(thread, stop)
        if "error" in result:
            raise result["error"]
        new = result["out"][0, len(ids) :].tolist()
        reason = "interrupted" if stop.is_set() else "stop" if self.eos in new else "length"
        if self.eos in new:
            new = new[: new.index(self.eos)]
        return Answer(self.tokenizer.decode(new, skip_special_tokens=True), len(new), reason)


def _join(thread: threading.Thread, stop: threading.Event) -> None:
    """Wait for the generation thread; Ctrl-C meanwhile (the streamer holds back text until a
    word ends, so the answer may still be generating) stops it at its next step."""
    while thread.is_alive():
        try:
            thread.join()
        except KeyboardInterrupt:
            stop.set()


class VLLMGenerator:
    """An in-process vLLM engine (:class:`rollouts.vllm_engine.VLLMEngine`): the answer is
    printed when done."""

    streams = False

    def __init__(self, cfg: ChatConfig, model_dir: Path, tokenizer, context: int) -> None:
        # lazy: vllm is optional and slow to import
        from rollouts.config import VLLMOptions
        from rollouts.vllm_engine import VLLMEngine, eos_ids_of

        dtype = cfg.dtype or checkpoint_dtype(model_dir)
        options = VLLMOptions(dtype=dtype, max_model_len=context, seed=cfg.seed)
        self.engine = VLLMEngine(model_dir, eos_ids_of(tokenizer), options)
        self.tokenizer, self.eos = tokenizer, tokenizer.eos_token_id

    def generate(self, ids: list[int], sampling: SamplingParams, emit: Callable[[str], None]):
        batch = self.engine.generate([ids], sampling)
        new = batch.completion_ids[0]
        if new and new[-1] == self.eos:
            new = new[:-1]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        emit(text)
        return Answer(text, len(new), batch.finish_reasons[0])

    def close(self) -> None:
        self.engine.close()


# --------------------------------------------------------------------------- the chat


class Chat:
    """A session, a model and a chat format: one turn at a time, and the ``/`` commands."""

    def __init__(self, cfg: ChatConfig, fmt: ChatFormat, tokenizer, generator, context: int,
                 notes: TextIO) -> None:  # fmt: skip
        self.cfg, self.fmt, self.tokenizer, self.generator = cfg, fmt, tokenizer, generator
        self.context, self.notes = context, notes
        self.session = Session()
        self.sampling = sampling_of(cfg)
        if cfg.system is not None:
            self.set_system(cfg.system, where="system")

    def note(self, text: str) -> None:
        print(text, file=self.notes, flush=True)

    def encode(self, messages: list[Message]) -> list[int]:
        text = self.fmt.render(messages, add_generation_prompt=True, tokenizer=self.tokenizer)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def set_system(self, text: str, where: str = "/system") -> None:
        """Set the system message if the chat format renders one (else a ``ValueError`` that
        starts with ``where``, the message unchanged)."""
        trial = [{"role": "system", "content": text}, {"role": "user", "content": "?"}]
        try:
            self.fmt.render(trial, add_generation_prompt=True, tokenizer=self.tokenizer)
        except Exception as error:  # the template's raise_exception: jinja2's TemplateError
            raise ValueError(f"{where}: {error}") from None
        self.session.system = text

    def command(self, line: str) -> bool:
        """Run a ``/`` command; False for ``/quit``."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.session.reset()
            self.note("(conversation cleared; the system message stays)")
        elif name == "/system" and arg:
            self.set_system(arg)
            self.note("(system message set)")
        elif name == "/system":
            self.note(f"(system message: {self.session.system!r})")
        elif name == "/save" and arg:
            n = self.session.save(Path(arg).expanduser())
            self.note(f"(saved {n} messages to {arg})")
        elif name == "/help":
            self.note(HELP)
        else:
            raise ValueError(f"{line.strip()}: unknown command or missing argument; {HELP}")
        return True

    def turn(self, text: str, emit: Callable[[str], None]) -> dict:
        """Answer one user turn: fit the history to the context, generate, keep the answer.
        Returns the transcript entry of the turn."""
        self.session.add("user", text)
        budget = self.context - self.cfg.max_new_tokens
        try:
            fitted = self.session.fit(self.encode, budget)
        except ValueError:
            self.session.drop_pending_user()
            raise
        if fitted.dropped:
            s = "s" if fitted.dropped > 1 else ""
            self.note(
                f"(dropped the oldest {fitted.dropped} turn{s} to fit the context: "
                f"{len(fitted.ids)} prompt tokens + {self.cfg.max_new_tokens} new <= "
                f"{self.context})"
            )
        if self.cfg.show_prompt:
            prompt = self.fmt.render(fitted.messages, add_generation_prompt=True,
                                     tokenizer=self.tokenizer)  # fmt: skip
            self.note(f"[prompt {len(fitted.ids)} tokens] {json.dumps(prompt)}")
        try:
            answer = self.generator.generate(fitted.ids, self.sampling, emit)
        except BaseException:
            self.session.drop_pending_user()
            raise
        self.session.add("assistant", answer.text.strip())
        return {
            "user": text,
            "answer": answer.text.strip(),
            "prompt_tokens": len(fitted.ids),
            "new_tokens": answer.new_tokens,
            "finish_reason": answer.finish_reason,
            "dropped_turns": fitted.dropped,
        }


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _answer(chat: Chat, line: str) -> None:
    """One turn at the terminal: ``model> `` and the answer as it comes (after the notes the
    turn prints first: truncation, the prompt), then a newline."""
    started = []

    def emit(piece: str) -> None:
        if not started:
            started.append(True)
            _write(ANSWER)
        _write(piece)

    entry = chat.turn(line, emit)
    emit("")
    _write((" [stopped]" if entry["finish_reason"] == "interrupted" else "") + "\n")


def interactive(chat: Chat) -> None:
    """The terminal loop: read a line, run a command or answer it; errors are one line."""
    if sys.stdin.isatty():
        # lazy: line editing and history for input(), at a terminal only
        import readline  # noqa: F401
    while True:
        try:
            line = input(PROMPT)
        except (EOFError, KeyboardInterrupt):
            _write("\n")
            return
        if not line.strip():
            continue
        try:
            if line.startswith("/"):
                if not chat.command(line):
                    return
                continue
            _answer(chat, line)
        except (ValueError, OSError) as error:
            chat.note(f"error: {error}")
        except KeyboardInterrupt:  # outside a streamed answer (vllm, or before it began)
            _write("\n")
            chat.note("(interrupted)")


def scripted(chat: Chat, turns: list[str], out: TextIO) -> int:
    """``--input``: answer each turn (commands run as at the prompt), one JSON line per turn."""
    n = 0
    for line in turns:
        if line.startswith("/"):
            chat.command(line)
            continue
        entry = chat.turn(line, lambda piece: None)
        n += 1
        out.write(json.dumps({"turn": n, **entry}, ensure_ascii=False) + "\n")
        out.flush()
    return n


def run_chat(cfg: ChatConfig) -> None:
    """``align chat``: the model, its chat format and context, then the chat."""
    model_dir = check_model_dir(cfg.model, "model")
    turns = read_turns(cfg.input) if cfg.input is not None else None
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fmt = chat_format_of(cfg.chat_format, tokenizer, cfg.model)
    context = context_of(cfg, model_dir)
    if context <= cfg.max_new_tokens:
        raise ValueError(
            f"max_context: {context} leaves no room for a prompt with max_new_tokens "
            f"{cfg.max_new_tokens}"
        )
    if cfg.engine == "vllm":
        generator = VLLMGenerator(cfg, model_dir, tokenizer, context)
    else:
        generator = HFGenerator(cfg, model_dir, tokenizer)
    notes = sys.stderr
    chat = Chat(cfg, fmt, tokenizer, generator, context, notes)
    try:
        if turns is not None:
            _run_scripted(chat, turns, cfg.output)
            return
        streaming = "streamed" if generator.streams else "printed when done"
        chat.note(
            f"align chat: {model_dir} (chat format {fmt.name}, engine {cfg.engine}: answers "
            f"{streaming}; context {context} tokens). /help for commands, Ctrl-D to leave."
        )
        interactive(chat)
    finally:
        if hasattr(generator, "close"):
            generator.close()


def _run_scripted(chat: Chat, turns: list[str], output: str | None) -> None:
    if output is None:
        scripted(chat, turns, sys.stdout)
        return
    with open(output, "w", encoding="utf-8") as out:
        n = scripted(chat, turns, out)
    chat.note(f"{output}: {n} turns")
