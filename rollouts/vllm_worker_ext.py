"""A vLLM worker extension that lets a server load the trainer's weights from a file.

Servers that ``align`` starts load it with ``--worker-extension-cls`` (:data:`EXTENSION`); the
trainer writes a safetensors file on the same host and calls :meth:`align_load_weights` through the
server's ``/collective_rpc`` route (enabled by ``VLLM_SERVER_DEV_MODE=1``, bound to 127.0.0.1).
"""

from __future__ import annotations

from rollouts.weight_sync import load_saved_weights, load_weights_in_place

EXTENSION = "rollouts.vllm_worker_ext.WeightSyncExtension"  # vLLM wants a dotted name


class WeightSyncExtension:
    """Mixed into vLLM's worker class; ``self.model_runner.model`` is the live model."""

    def align_load_weights(self, path: str) -> int:
        """Load a safetensors file of HF-named weights in place; returns the names loaded."""
        return load_weights_in_place(self.model_runner.model, load_saved_weights(path))
