"""Rollouts with a vLLM engine colocated with the trainer.

The engine core runs in the training process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); its model
lives there too, or, with ``tensor_parallel_size > 1``, in worker processes that each hold a shard.
:meth:`VLLMEngine.sync_weights` hands the trainer's weights to every worker
(:class:`~rollouts.vllm_worker_ext.WeightSyncExtension`) one layer at a time, which loads them in
place — on GPU and on the CPU backend alike (see :mod:`rollouts.weight_sync`); under DeepSpeed
ZeRO-3 each layer is gathered only while it is sent, never the whole model. With several training
processes each process runs its own engine (vLLM's ``external_launcher``, one replica per
process). With sleep mode (GPU), weights and KV cache are released between rollouts: a sync wakes
the weights only, a rollout the rest, and both go back to sleep after the rollout. Logprobs
follow the rollout contract (``log_softmax(logits / T)`` before top-k / top-p) through
:mod:`rollouts.vllm_logprobs`.

Scripts that create an engine need ``if __name__ == "__main__":`` (vLLM may spawn processes).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from rollouts.base import FinishReason, RolloutBatch, SamplingParams
from rollouts.config import CPU_KV_CACHE_BYTES, VLLMOptions  # noqa: F401  (re-exported)
from rollouts.vllm_compat import (
    COMPILED_BACKEND_HELP,
    restore_transformers_classes,
    rewritten_transformers_classes,
)
from rollouts.weight_sync import weight_chunks


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """``os.environ`` with ``values`` set inside the block (as worker processes start)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cpu_workers_env(workers: int) -> dict[str, str]:
    """Environment for ``workers`` vLLM CPU workers: vLLM's automatic thread binding wants one
    NUMA node per worker, so several workers on one node get an equal share of the cores each
    (unless ``VLLM_CPU_OMP_THREADS_BIND`` is already set). Empty with CUDA or one worker."""
    if workers == 1 or torch.cuda.is_available() or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": cpu_thread_binding(workers)}


def cpu_thread_binding(workers: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each of ``workers`` CPU workers an equal share of
    this process's cores (``"0,1|2,3"`` for 2 workers on 4 cores)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < workers:
        raise ValueError(f"tensor_parallel_size {workers}: only {len(cores)} CPU cores here")
    share = len(cores) // workers
    groups = [cores[i * share : (i + 1) * share] for i in range(workers)]
    return "|".join(",".join(map(str, g)) for g in groups)


def vllm_sampling_fields(sampling: SamplingParams, eos_token_ids: Sequence[int], n: int) -> dict:
    """vLLM sampling fields (``vllm.SamplingParams`` keywords and OpenAI request fields alike).

    Greedy becomes ``temperature=1, top_k=1`` (see :mod:`rollouts.vllm_logprobs`); stopping is
    exactly at ``eos_token_ids``, which stay in the completion as with ``generate``.
    """
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    greedy = sampling.greedy
    return {
        "n": n,
        "max_tokens": sampling.max_new_tokens,
        "temperature": 1.0 if greedy else sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "top_k": 1 if greedy else (sampling.top_k or -1),
        "seed": sampling.seed,
        "logprobs": 0,
        "stop_token_ids": list(eos_token_ids),
        "ignore_eos": True,
    }


def finish_reason(reason: str | None, where: str) -> FinishReason:
    if reason not in ("stop", "length"):
        raise RuntimeError(f"{where}: generation ended with finish reason {reason!r}")
    return reason


def check_prompts(prompt_token_ids: Sequence[Sequence[int]]) -> None:
    if any(len(p) == 0 for p in prompt_token_ids):
        raise ValueError("every prompt needs at least one token")


class VLLMEngine:
    """A :class:`~rollouts.base.RolloutEngine` on an in-process ``vllm.LLM``."""

    # generates with its own copy of the weights: the trainer syncs it layer by layer from its
    # (ZeRO-3 partitioned) model instead of gathering the model whole for generation
    holds_own_weights = True

    def __init__(
        self,
        model_dir: str | Path,
        eos_token_ids: int | Sequence[int],
        options: VLLMOptions | None = None,
        owned_dir: Path | None = None,
    ) -> None:
        from vllm import LLM  # lazy: vllm is optional

        self.options = options or VLLMOptions()
        self.eos_token_ids = (
            [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
        )
        self.model_dir, self._owned_dir = Path(model_dir), owned_dir
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: weights reachable
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        started = time.perf_counter()
        kwargs = self.options.colocated_kwargs()
        with environment(cpu_workers_env(self.options.tensor_parallel_size)):
            self.llm = LLM(model=str(model_dir), **kwargs)
        # vLLM's CPU worker replaces torch.set_num_threads by a no-op (after binding its OpenMP
        # threads) and asks for one intra-op thread "for serving". In-process, both would reach
        # the trainer too: give torch its function and thread count back.
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        atexit.register(self.close)  # before vLLM's own finalizer, which would fail as above
        self._keep_transformers_usable(eager=kwargs["enforce_eager"])
        self.awake = {"weights", "kv_cache"}  # what sleep mode has not released
        self.sync_count, self.last_sync_seconds = 0, 0.0
        self.start_seconds = time.perf_counter() - started  # vLLM's start-up
        self.sleep()

    def _keep_transformers_usable(self, eager: bool) -> None:
        """Undo vLLM's rewrite of transformers classes (:mod:`rollouts.vllm_compat`); an engine
        that compiles a model through vLLM's Transformers backend is closed and refused."""
        if eager:
            restore_transformers_classes()
            return
        rewritten = [cls.__qualname__ for cls in rewritten_transformers_classes()]
        if rewritten:
            self.close()
            restore_transformers_classes()
            raise ValueError(COMPILED_BACKEND_HELP.format(names=", ".join(rewritten)))

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer, options: VLLMOptions | None = None):
        """An engine on an in-memory model: saved (safetensors) to a temporary directory that
        :meth:`close` removes."""
        workdir = Path(tempfile.mkdtemp(prefix="align-vllm-"))
        model.save_pretrained(workdir, safe_serialization=True)
        tokenizer.save_pretrained(workdir)
        return cls(workdir, eos_ids_of(tokenizer), options, owned_dir=workdir)

    # ------------------------------------------------------------ sleep mode

    def sleep(self) -> None:
        """Release weights (kept in host memory) and KV cache (sleep mode only) until the next
        use."""
        if self.options.enable_sleep_mode and self.awake:
            self.llm.sleep(level=1)
            self.awake = set()

    def wake_up(self, tags: tuple[str, ...] = ("weights", "kv_cache")) -> None:
        """Re-allocate what ``tags`` name (``weights``, ``kv_cache``) if sleep mode released it."""
        missing = [tag for tag in tags if tag not in self.awake]
        if self.options.enable_sleep_mode and missing:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the trainer's cached blocks, before vLLM maps its own
            self.llm.wake_up(tags=missing)
            self.awake.update(missing)

    # ------------------------------------------------------------ protocol

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s weights (LoRA merged) into vLLM in place, one layer at a time: under
        ZeRO-3 each layer is gathered only while it is loaded (every training process syncs
        its own engine, so all of them take part in each gather). With sleep mode the weights
        stay awake for the rollout that follows."""
        started = time.perf_counter()
        self.wake_up(("weights",))
        # each call runs in every worker: in this process, or in a tensor-parallel engine's workers
        rpc = self.llm.collective_rpc
        rpc("align_start_load")
        for chunk in weight_chunks(model):
            rpc("align_load_chunk", args=(chunk,))
        rpc("align_finish_load")
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self.sync_count += 1
        self.last_sync_seconds = time.perf_counter() - started

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams, n: int = 1
    ) -> RolloutBatch:
        from vllm import SamplingParams as VSamplingParams  # lazy: vllm is optional

        check_prompts(prompt_token_ids)
        params = VSamplingParams(
            **vllm_sampling_fields(sampling, self.eos_token_ids, n), detokenize=False
        )
        self.wake_up()
        try:
            outputs = self.llm.generate(
                [{"prompt_token_ids": list(p)} for p in prompt_token_ids], params, use_tqdm=False
            )
        finally:
            self.sleep()
        return self._to_batch(prompt_token_ids, outputs, n)

    def _to_batch(self, prompts: Sequence[Sequence[int]], outputs, n: int) -> RolloutBatch:
        prompt_ids, completion_ids, logprobs, reasons = [], [], [], []
        for prompt, request in zip(prompts, outputs):
            for sample in sorted(request.outputs, key=lambda o: o.index):
                tokens = list(sample.token_ids)
                prompt_ids.append(list(prompt))
                completion_ids.append(tokens)
                logprobs.append([step[t].logprob for step, t in zip(sample.logprobs, tokens)])
                reasons.append(finish_reason(sample.finish_reason, "vLLM"))
        return RolloutBatch(prompt_ids, completion_ids, logprobs, reasons, n)

    def close(self) -> None:
        """Shut vLLM down and remove the temporary model directory the engine owns."""
        if self.llm is not None:
            llm, self.llm = self.llm, None
            # After accelerate's end_training() destroyed the (vLLM-created) default process
            # group, vLLM's teardown of its own groups raises ValueError, harmlessly.
            with contextlib.suppress(ValueError):
                llm.llm_engine.engine_core.shutdown()
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)


def eos_ids_of(tokenizer) -> list[int]:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; generation could never stop")
    return [tokenizer.eos_token_id]
