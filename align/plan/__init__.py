"""Memory plans: what a run needs per process, by item, before anyone books a cluster.

``memory`` holds the estimation math as pure functions on plain numbers (bytes per parameter
under ZeRO, activations per layer, logits, KV cache, the phases of a PPO step); ``models`` counts
a model's parameters exactly from its ``config.json`` (built on the meta device: no weights are
read) and holds a small table of well-known shapes. ``align plan`` (:mod:`align.cli.plan`) reads
a run's config and prints the plan.

Layer 2 (measurement, beside ``eval``). May import: ``align.core`` and third-party packages; never
the orchestration packages (it sees a run only through the numbers it is given).
"""
