"""Layer 0, the foundations: data contracts, chat formats, the PPO math (``core_algos``), the
config system, atomic I/O and metrics files, checkpoints, HTTP, distributed set-up, answer
extraction and category mixtures.

May import: the standard library and third-party packages only; never ``align`` code outside
``align.core``, nor ``rm``, ``rollouts`` or ``eval``.
"""
