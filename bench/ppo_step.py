"""One PPO step: align's ``PPOTrainer`` vs TRL 0.24's ``PPOTrainer``, side by side.

    .venv/bin/python bench/ppo_step.py [--steps 5] [--ppo-epochs 1] [--peer-venv PATH]

Both sides train the same three random-init Llama models (saved once by this script with
transformers 5, loaded by both): a "tiny-256" policy (hidden 256, 4 layers, 8 heads, 4 KV heads,
MLP 688, vocabulary of the tiny world's tokenizer) that also serves as the frozen reference (a
second copy), and separate ``LlamaForSequenceClassification`` (1 label) reward and value models.
Each step: 16 prompts of 16-32 random tokens (the same 16 every step, each used once), one sample
of 32 new tokens each at temperature 0.7 (top-p 1, top-k off, nothing stops a row early on the
TRL side and random models rarely emit EOS), reward = the reward model at the last token of
prompt + completion, 1 minibatch of 16, ``--ppo-epochs`` epochs, lr 1e-6, fp32, 2 threads.

The peer runs TRL 0.24.0 with transformers 4.57 in a throw-away venv (default
``~/.cache/align/bench-trl024-venv``, made with ``python3 -m venv`` + pip the first time, ~1 min,
reused afterwards). Each side runs in its own process (this file with ``--side``), so peak RSS is
its own; each does one warm-up step and then ``--steps`` timed ones. The two processes take turns
step by step (never both computing at once), so other work on the machine slows both alike. The
peer's steps are timed with a ``TrainerCallback`` (from its turn starting to ``on_step_end``),
its phases by wrapping the helpers its loop calls. align's side calls ``PPOTrainer.ppo_step()``
with ``trainer.prompt_ids`` set to the exact token ids and a sampler that hands out each of the
16 prompts once per step (the mixture sampler would draw with replacement); its phases are the
trainer's own ``time/*`` metrics plus wrapped backward / clip / optimizer / advantage calls. Both
sides check that they loaded the same weights (a logits fingerprint).

Prints one JSON line per side (median s/step, samples/s, median CPU s/step, median ms per phase,
peak RSS, parameter counts), then a summary line with ``speedup_samples_per_s`` = align samples/s
over TRL samples/s (ratio of the medians) and the speed-up of each pair of turns.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

# This file also runs as the TRL 0.24 side, in a venv without align (and with transformers 4):
# each side imports its own libraries inside its functions, after setting up its environment.

ROLLOUT = 16  # prompts per step, one sample each
NEW_TOKENS = 32
TEMPERATURE = 0.7
LR = 1e-6
THREADS = 2
TARGET = 1.3  # the target speed-up in samples/s
PEER_PACKAGES = [
    "torch==2.13.0",
    "trl==0.24.0",
    "transformers>=4.56.1,<4.58",
    "accelerate>=1.4.0",
    "datasets>=3.0.0",
]
PEER_CHECK = (
    "import torch, transformers, trl; "
    "assert trl.__version__ == '0.24.0', trl.__version__; "
    "assert tuple(int(x) for x in transformers.__version__.split('.')[:2]) < (4, 58)"
)
DEFAULT_PEER_VENV = Path.home() / ".cache" / "align" / "bench-trl024-venv"
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- shared helpers


def timed(fn, sink: dict, name: str):
    """``fn`` that adds its wall time to ``sink[name]``."""

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink[name] += time.perf_counter() - started

    return wrapper


@torch.no_grad()
def fingerprint(policy, reward, value, ids: list[int]) -> dict:
    """A few outputs of each model on one prompt, to check both sides loaded the same weights."""
    x = torch.tensor([ids])
    out = {"policy": [round(v, 5) for v in policy(input_ids=x).logits[0, -1, :4].tolist()]}
    for name, model in (("reward", reward), ("value", value)):
        hidden = model.model(input_ids=x).last_hidden_state
        out[name] = round(model.score(hidden)[0, -1, 0].item(), 5)
    return out


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Control:
    """A side's end of the lockstep with the driver: before each step it says ``ready`` and
    waits for ``go``, so the two sides' steps alternate and never overlap. Without ``--ctl`` (a
    side run by hand) it never waits."""

    def __init__(self, spec: str | None) -> None:
        self.inbox = self.outbox = None
        if spec:
            inbox, outbox = (int(fd) for fd in spec.split(","))
            self.inbox, self.outbox = os.fdopen(inbox, "r"), os.fdopen(outbox, "w")

    def ready(self) -> None:
        if self.outbox:
            self.outbox.write("ready\n")
            self.outbox.flush()

    def wait_for_go(self) -> None:
        self.ready()
        if self.inbox and self.inbox.readline().strip() != "go":
            raise SystemExit("the driver went away")


def summarize(
    side: str, durations: list[float], cpu: list[float], phases: list[dict], extra: dict
) -> dict:
    """The JSON line of one side: medians over the timed steps (``other`` = the step's time
    outside the named phases, per step, then the median)."""
    median = statistics.median(durations)
    phases = [{**p, "other": d - sum(p.values())} for p, d in zip(phases, durations)]
    names = sorted({k for p in phases for k in p}, key=lambda k: (k == "other", k))
    phase_ms = {k: round(1000 * statistics.median(p.get(k, 0.0) for p in phases), 1) for k in names}
    return {
        "side": side,
        "s_per_step": round(median, 3),
        "samples_per_s": round(ROLLOUT / median, 2),
        "s_per_step_all": [round(d, 3) for d in durations],
        "cpu_s_per_step": round(statistics.median(cpu), 3),
        "phases_ms": phase_ms,
        "peak_rss_mb": peak_rss_mb(),
        **extra,
    }


# ---------------------------------------------------------------- models and prompts


def build_models(root: Path) -> None:
    """Policy, reward and value models + tokenizer + prompts under ``root`` (transformers 5)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # lazy: after HF_HUB_OFFLINE is set; align only on this side (see the note at the top)
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    from align.tiny.build import build_tiny_world

    world, _ = build_tiny_world()
    tokenizer = AutoTokenizer.from_pretrained(world.tokenizer)
    vocab = len(tokenizer)
    for name, cls, seed in (
        ("policy", LlamaForCausalLM, 0),
        ("reward", LlamaForSequenceClassification, 1),
        ("value", LlamaForSequenceClassification, 2),
    ):
        # Plain LlamaConfig fields only, so transformers 4.57 reads the same model.
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            dtype="float32",
        )
        if cls is LlamaForSequenceClassification:
            config.num_labels = 1
        torch.manual_seed(seed)
        cls(config).save_pretrained(root / name, safe_serialization=True)
        shutil.copytree(world.tokenizer, root / name, dirs_exist_ok=True)
    special = set(tokenizer.all_special_ids)
    usable = torch.tensor([i for i in range(vocab) if i not in special])
    g = torch.Generator().manual_seed(1234)
    prompts = []
    for _ in range(ROLLOUT):
        length = int(torch.randint(16, 33, (1,), generator=g))
        prompts.append(usable[torch.randint(len(usable), (length,), generator=g)].tolist())
    (root / "prompts.json").write_text(json.dumps(prompts), encoding="utf-8")


# ---------------------------------------------------------------- align (repo venv)


class EachPromptOnce:
    """Stands in for the trainer's mixture sampler: prompts 0..n-1, each once, every step."""

    def sample(self, n: int) -> list[int]:
        return list(range(n))


def make_reward_fn(reward_model, pad_id: int):
    from rm.model import last_token_scores  # lazy: align's side only (see the note at the top)

    def rm_fn(prompts, completions, prompt_ids, completion_ids, **_):
        seqs = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, s in enumerate(seqs):
            ids[k, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[k, : len(s)] = 1
        with torch.no_grad():
            return last_token_scores(reward_model, ids, mask).tolist()

    return rm_fn


def run_align(args, control: Control) -> dict:
    sys.path.insert(0, str(REPO))
    # lazy: align's side only, after its path is set (see the note at the top)
    import transformers
    from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

    from align.ppo.config import PPOConfig
    from align.ppo.trainer import PPOTrainer, WeightedReward
    from rollouts.hf_generate import GenerateEngine

    root = Path(args.models)
    prompts = json.loads((root / "prompts.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(root / "policy")
    actor = LlamaForCausalLM.from_pretrained(root / "policy", dtype=torch.float32)
    reference = LlamaForCausalLM.from_pretrained(root / "policy", dtype=torch.float32)
    critic = LlamaForSequenceClassification.from_pretrained(root / "value", dtype=torch.float32)
    reward_model = LlamaForSequenceClassification.from_pretrained(
        root / "reward", dtype=torch.float32
    )
    reward_model.eval().requires_grad_(False)
    check = fingerprint(actor.eval(), reward_model, critic.eval(), prompts[0])
    cfg = PPOConfig(
        rollout_batch_size=ROLLOUT,
        samples_per_prompt=1,
        max_new_tokens=NEW_TOKENS,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        missing_eos_penalty=None,
        ppo_epochs=args.ppo_epochs,
        num_minibatches=1,
        micro_batch_size=ROLLOUT,
        actor_lr=LR,
        critic_lr=LR,
        total_steps=1 + args.steps,
        save_every=0,
        eval_max_prompts=0,
        output_dir=str(root / "align-run"),
    )
    records = [
        {"id": f"bench-{i}", "prompt": tokenizer.decode(p), "category": "bench"}
        for i, p in enumerate(prompts)
    ]
    rewards = [WeightedReward("rm", make_reward_fn(reward_model, tokenizer.pad_token_id), 1.0)]
    engine = GenerateEngine.from_tokenizer(actor, tokenizer)
    trainer = PPOTrainer(
        cfg, actor, reference, critic, tokenizer, rewards, records, engine, eval_prompts=None
    )
    trainer.prompt_ids = [list(p) for p in prompts]  # exact ids, not the chat-templated text
    trainer.sampler = EachPromptOnce()

    sink: dict[str, float] = defaultdict(float)
    trainer.compute_advantages = timed(trainer.compute_advantages, sink, "advantages")
    trainer.accelerator.backward = timed(trainer.accelerator.backward, sink, "train_backward")
    trainer.optimizer.step = timed(trainer.optimizer.step, sink, "train_optimizer")
    trainer.accelerator.clip_grad_norm_ = timed(
        trainer.accelerator.clip_grad_norm_, sink, "train_clip_grad"
    )
    durations, cpu, phases, tokens = [], [], [], []
    setup_rss = peak_rss_mb()
    for step in range(1 + args.steps):
        control.wait_for_go()
        sink.clear()
        started, started_cpu = time.perf_counter(), time.process_time()
        metrics = trainer.ppo_step()
        elapsed = time.perf_counter() - started
        trainer.step += 1
        if step == 0:
            continue  # warm-up
        durations.append(elapsed)
        cpu.append(time.process_time() - started_cpu)
        times = {k.removeprefix("time/"): v for k, v in metrics.items() if k.startswith("time/")}
        train_parts = sum(v for k, v in sink.items() if k.startswith("train_"))
        times["train_forward_and_loss"] = times.pop("train") - train_parts
        phases.append({**times, **sink})
        tokens.append(round(metrics["response_length"] * ROLLOUT))
    return summarize(
        "align",
        durations,
        cpu,
        phases,
        {
            "generated_tokens_per_step": statistics.median(tokens),
            "params": {
                "policy": param_count(actor),
                "value": param_count(critic),
                "reward": param_count(reward_model),
            },
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "fingerprint": check,
            "peak_rss_before_steps_mb": setup_rss,
        },
    )


# ---------------------------------------------------------------- TRL 0.24 (peer venv)


def _patch_peer_phases(trainer, ppo_module, sink: dict, tokens: list) -> None:
    """Time the helpers TRL 0.24's loop calls (module globals and instance attributes)."""
    generate, forward, get_reward = (
        ppo_module.batch_generation,
        ppo_module.forward,
        ppo_module.get_reward,
    )
    reward_model = trainer.reward_model

    def batch_generation(model, queries, *args, **kwargs):
        started = time.perf_counter()
        out = generate(model, queries, *args, **kwargs)
        sink["generate"] += time.perf_counter() - started
        tokens.append((out[0].shape[1] - queries.shape[1]) * queries.shape[0])
        return out

    def timed_forward(model, *args, **kwargs):
        name = "train_forward" if torch.is_grad_enabled() else "reference"
        return timed(forward, sink, name)(model, *args, **kwargs)

    def timed_reward(model, *args, **kwargs):
        name = "reward" if model is reward_model else "value_forward"
        return timed(get_reward, sink, name)(model, *args, **kwargs)

    ppo_module.batch_generation = batch_generation
    ppo_module.forward = timed_forward
    ppo_module.get_reward = timed_reward
    ppo_module.gc = SimpleNamespace(collect=timed(gc.collect, sink, "gc_collect"))
    trainer.accelerator.backward = timed(trainer.accelerator.backward, sink, "train_backward")
    trainer.optimizer.step = timed(trainer.optimizer.step, sink, "train_optimizer")


def run_peer(args, control: Control) -> dict:
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    # lazy: the peer venv's TRL 0.24 (its PPOTrainer is gone from TRL 1.x), after the line above
    import transformers
    import trl
    import trl.trainer.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import (
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        PreTrainedTokenizerFast,
        TrainerCallback,
    )
    from trl import PPOConfig, PPOTrainer

    root = Path(args.models)
    prompts = json.loads((root / "prompts.json").read_text(encoding="utf-8"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(root / "policy" / "tokenizer.json"),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
    )
    policy = LlamaForCausalLM.from_pretrained(root / "policy", dtype=torch.float32)
    reference = LlamaForCausalLM.from_pretrained(root / "policy", dtype=torch.float32)
    value = LlamaForSequenceClassification.from_pretrained(root / "value", dtype=torch.float32)
    reward = LlamaForSequenceClassification.from_pretrained(root / "reward", dtype=torch.float32)
    check = fingerprint(policy.eval(), reward.eval(), value.eval(), prompts[0])
    config = PPOConfig(
        output_dir=str(root / "trl-run"),
        per_device_train_batch_size=ROLLOUT,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=args.ppo_epochs,
        total_episodes=ROLLOUT * (1 + args.steps),
        local_rollout_forward_batch_size=ROLLOUT,
        response_length=NEW_TOKENS,
        temperature=TEMPERATURE,
        stop_token=None,
        missing_eos_penalty=None,
        learning_rate=LR,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1000,
        seed=0,
    )
    dataset = Dataset.from_dict({"input_ids": prompts})

    # A step runs from "go" (at train begin, then in the previous step's on_step_end) to its
    # on_step_end, so it includes the tail of the previous iteration (its second gc.collect()).
    starts: list[tuple[float, float]] = []  # (wall, cpu)
    ends: list[tuple[float, float]] = []
    sink: dict[str, float] = defaultdict(float)
    phases: list[dict] = []
    setup_rss: list[float] = []

    def start_step() -> None:
        control.wait_for_go()
        sink.clear()
        starts.append((time.perf_counter(), time.process_time()))

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *_, **__):
            setup_rss.append(peak_rss_mb())
            start_step()

        def on_step_end(self, _args, state, _control, **__):
            ends.append((time.perf_counter(), time.process_time()))
            phases.append(dict(sink))
            if state.global_step < state.max_steps:
                start_step()

    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=reference,
        reward_model=reward,
        train_dataset=dataset,
        value_model=value,
        eval_dataset=dataset,
        callbacks=[StepTimer()],
    )
    tokens: list[int] = []
    _patch_peer_phases(trainer, ppo_module, sink, tokens)
    torch.set_num_threads(THREADS)
    trainer.train()
    steps = list(zip(starts, ends))[1:]  # drop the warm-up step
    return summarize(
        "trl-0.24",
        [b[0] - a[0] for a, b in steps],
        [b[1] - a[1] for a, b in steps],
        phases[1:],
        {
            "generated_tokens_per_step": statistics.median(tokens[1:]),
            "params": {
                "policy": param_count(policy),
                "value": param_count(value),
                "reward": param_count(reward),
            },
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "trl": trl.__version__,
            },
            "fingerprint": check,
            "peak_rss_before_steps_mb": setup_rss[0],
        },
    )


# ---------------------------------------------------------------- driver


def ensure_peer_venv(path: Path) -> Path:
    """The peer venv's python; created (or repaired) with ``python3 -m venv`` + pip."""
    python = path / "bin" / "python"
    ok = python.exists() and subprocess.run([python, "-c", PEER_CHECK], capture_output=True)
    if ok and ok.returncode == 0:
        return python
    print(f"# creating the TRL 0.24 venv in {path} (about a minute)", file=sys.stderr, flush=True)
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", path], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PACKAGES],
        check=True,
    )
    subprocess.run([python, "-c", PEER_CHECK], check=True)
    return python


class Side:
    """A side's process, started by the driver and stepped through :class:`Control`."""

    def __init__(self, python: Path, side: str, models: Path, args) -> None:
        self.name, self.result, self.log = side, models / f"{side}.json", models / f"{side}.log"
        to_child, from_driver = os.pipe()
        from_child, to_driver = os.pipe()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1", PYTHONNOUSERSITE="1")
        cmd = [python, str(Path(__file__).resolve()), "--side", side, "--models", str(models)]
        cmd += ["--steps", str(args.steps), "--ppo-epochs", str(args.ppo_epochs)]
        cmd += ["--result", str(self.result), "--ctl", f"{to_child},{to_driver}"]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=models,
                pass_fds=(to_child, to_driver),
            )
        os.close(to_child)
        os.close(to_driver)
        self.outbox, self.inbox = os.fdopen(from_driver, "w"), os.fdopen(from_child, "r")

    def wait_ready(self) -> None:
        if self.inbox.readline().strip() != "ready":
            self.proc.wait()
            sys.stderr.write(self.log.read_text(encoding="utf-8", errors="replace")[-8000:])
            raise SystemExit(f"{self.name} side failed (exit {self.proc.returncode})")

    def step(self) -> None:
        self.outbox.write("go\n")
        self.outbox.flush()
        self.wait_ready()

    def finish(self) -> dict:
        if self.proc.wait() != 0:
            sys.stderr.write(self.log.read_text(encoding="utf-8", errors="replace")[-8000:])
            raise SystemExit(f"{self.name} side failed (exit {self.proc.returncode})")
        return json.loads(self.result.read_text(encoding="utf-8"))


def run_sides(peer_python: Path, models: Path, args) -> tuple[dict, dict]:
    """Both sides set up at once, then take turns, one step at a time (who goes first
    alternates), so load from other work on the machine hits both alike."""
    peer = Side(peer_python, "peer", models, args)
    ours = Side(Path(sys.executable), "align", models, args)
    for side in (peer, ours):
        side.wait_ready()
    load_before = os.getloadavg()[0]
    for step in range(1 + args.steps):
        for side in (peer, ours) if step % 2 == 0 else (ours, peer):
            side.step()
            if step == args.steps:  # its exit must not overlap the other side's last step
                side.proc.wait()
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    rows = peer.finish(), ours.finish()
    for row in rows:  # the 1-minute load average before and after the timed steps
        row["loadavg_1min"] = load
    return rows


def same_models(a: dict, b: dict, tol: float = 1e-4) -> bool:
    flat_a = [*a["policy"], a["reward"], a["value"]]
    flat_b = [*b["policy"], b["reward"], b["value"]]
    return all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(flat_a, flat_b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 1 warm-up")
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--peer-venv", type=Path, default=DEFAULT_PEER_VENV)
    parser.add_argument("--side", choices=["align", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--ctl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        torch.set_num_threads(THREADS)
        control = Control(args.ctl)
        row = (run_align if args.side == "align" else run_peer)(args, control)
        row.update(steps=args.steps, ppo_epochs=args.ppo_epochs, threads=torch.get_num_threads())
        Path(args.result).write_text(json.dumps(row), encoding="utf-8")
        control.ready()  # finished
        return
    peer_python = ensure_peer_venv(args.peer_venv.expanduser())
    with tempfile.TemporaryDirectory(prefix="align-bench-ppo-") as tmp:
        models = Path(tmp)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON lines
            build_models(models)
        peer, ours = run_sides(peer_python, models, args)
        print(json.dumps(peer), flush=True)
        print(json.dumps(ours), flush=True)
    paired = [p / a for p, a in zip(peer["s_per_step_all"], ours["s_per_step_all"])]
    print(
        json.dumps(
            {
                "speedup_samples_per_s": round(ours["samples_per_s"] / peer["samples_per_s"], 2),
                "speedup_per_step_pair": [round(r, 2) for r in paired],
                "speedup_cpu_s": round(peer["cpu_s_per_step"] / ours["cpu_s_per_step"], 2),
                "ppo_epochs": args.ppo_epochs,
                "steps": args.steps,
                "align_s_per_step": ours["s_per_step"],
                "trl_s_per_step": peer["s_per_step"],
                "peak_rss_ratio": round(ours["peak_rss_mb"] / peer["peak_rss_mb"], 2),
                "generated_tokens_per_step": {
                    "align": ours["generated_tokens_per_step"],
                    "trl": peer["generated_tokens_per_step"],
                },
                "same_models": same_models(ours["fingerprint"], peer["fingerprint"]),
                "target": TARGET,
                "meets_target": ours["samples_per_s"] / peer["samples_per_s"] >= TARGET,
            }
        )
    )


if __name__ == "__main__":
    main()
