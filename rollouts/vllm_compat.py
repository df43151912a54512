"""Keeping transformers usable in a process that also runs a vLLM engine.

vLLM serves architectures it has no model of its own for (GPT-NeoX in vLLM 0.32, and any
architecture newer than the installed vLLM) through its Transformers backend. That backend marks
the transformers decoder class (``GPTNeoXModel``) for torch.compile by rewriting the class itself
(``vllm.compilation.decorators._support_torch_compile``): one more base class, an ``__init__``
that needs a current vLLM config, and a ``__call__`` that reads an attribute only instances built
by that ``__init__`` have. In a colocated engine the class is the trainer's too, so once the engine
is built every model of the architecture the trainer loaded fails on its next forward
(``AttributeError: 'GPTNeoXModel' object has no attribute 'do_not_compile'``) and none can be
loaded any more (``AssertionError: Current vLLM config is not set``).

With compilation off (``enforce_eager``, always the case on CPU) the rewrite does nothing for vLLM
— its instance's ``__call__`` goes straight to ``forward`` — so :func:`restore_transformers_classes`
undoes it once the engine is built. With compilation on the engine relies on it: the caller refuses
the engine with :data:`COMPILED_BACKEND_HELP`.
"""

from __future__ import annotations

COMPILED_BACKEND_HELP = (
    "rollout.vllm.enforce_eager: vLLM serves {names} through its Transformers backend, whose "
    "torch.compile support rewrites these transformers classes in this process and breaks the "
    "trainer's models; set rollout.vllm.enforce_eager true, or use the vllm-server engine (its "
    "own process)"
)


def rewritten_transformers_classes() -> list[type]:
    """transformers classes vLLM rewrote for torch.compile in this process."""
    # lazy: vllm is optional
    from vllm.compilation.wrapper import TorchCompileWithNoGuardsWrapper

    return [
        cls
        for cls in TorchCompileWithNoGuardsWrapper.__subclasses__()
        if cls.__module__.startswith("transformers.")
    ]


def _vllm_function(cls: type, name: str):
    """``cls.<name>`` when vLLM's decorator set it (its qualname says so), else None."""
    value = cls.__dict__.get(name)
    return value if "_support_torch_compile" in getattr(value, "__qualname__", "") else None


def restore_class(cls: type) -> None:
    """Undo ``_support_torch_compile`` on ``cls``: its own ``__init__``, ``nn.Module.__call__``
    and its original bases again. Fails loudly when vLLM's rewrite is not the one this undoes."""
    # lazy: vllm is optional
    from vllm.compilation.decorators import IGNORE_COMPILE_KEY
    from vllm.compilation.wrapper import TorchCompileWithNoGuardsWrapper

    init = _vllm_function(cls, "__init__")
    cells = dict(zip(init.__code__.co_freevars, init.__closure__ or ())) if init else {}
    if "old_init" not in cells:
        raise RuntimeError(
            f"vLLM rewrote {cls.__qualname__} for torch.compile in a way align cannot undo "
            "(another vLLM version?); use the vllm-server engine for this architecture"
        )
    cls.__init__ = cells["old_init"].cell_contents
    for name in ("__call__", "save_aot_compiled_function"):
        if _vllm_function(cls, name) is not None:
            delattr(cls, name)
    if IGNORE_COMPILE_KEY in cls.__dict__:
        delattr(cls, IGNORE_COMPILE_KEY)
    cls.__bases__ = tuple(b for b in cls.__bases__ if b is not TorchCompileWithNoGuardsWrapper)


def restore_transformers_classes() -> list[str]:
    """Undo vLLM's rewrite of every transformers class (see the module docstring); returns the
    names of the classes restored. Only valid when the engine does not compile."""
    restored = []
    for cls in rewritten_transformers_classes():
        restore_class(cls)
        restored.append(cls.__qualname__)
    return restored
