"""A vLLM worker extension: loads the trainer's weights (tensors, or a file), and registers the
gloo weight-transfer backend (:mod:`rollouts.weight_transfer`) with vLLM when a worker imports it.

Colocated engines and servers that ``align`` starts load it (``worker_extension_cls`` /
``--worker-extension-cls``, :data:`EXTENSION`). For a server's file transport the trainer writes
a safetensors file on the same host and calls :meth:`align_load_weights` through the server's
``/collective_rpc`` route (enabled by ``VLLM_SERVER_DEV_MODE=1``, bound to 127.0.0.1).
"""

from __future__ import annotations

import torch

from rollouts.weight_sync import InPlaceLoader, load_saved_weights, load_weights_in_place
from rollouts.weight_transfer import register_worker_engine

EXTENSION = "rollouts.vllm_worker_ext.WeightSyncExtension"  # vLLM wants a dotted name

register_worker_engine()  # imported in every worker before its model (and transfer engine) load


class WeightSyncExtension:
    """Mixed into vLLM's worker class; ``self.model_runner.model`` is the live model."""

    def align_load_weights(self, path: str) -> int:
        """Load a safetensors file of HF-named weights in place; returns the names loaded."""
        return self.align_load_tensors(load_saved_weights(path))

    def align_load_tensors(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """Load HF-named full tensors in place (each worker keeps its tensor-parallel shard)."""
        return load_weights_in_place(self.model_runner.model, weights)

    # a sync in chunks: start, one call per layer, finish (rollouts.vllm_engine.sync_weights)

    def align_start_load(self) -> None:
        self._align_loader = InPlaceLoader(self.model_runner.model)

    def align_load_chunk(self, weights: list[tuple[str, torch.Tensor]]) -> int:
        """Load one layer's HF-named full tensors in place (after :meth:`align_start_load`)."""
        return self._align_loader.load(weights)

    def align_finish_load(self) -> int:
        """End the sync; returns the number of vLLM parameters it set."""
        loader, self._align_loader = self._align_loader, None
        return loader.finish()
