"""The PEI-RLHF loop: ``controller`` (pure decisions between rounds), ``run`` (the loop and its
round directories), ``report`` (report.md and charts).

Layer 3 (orchestration). May import: ``align.core``, ``rm``, ``rollouts``, ``eval``, ``align.tiny``,
``align.ppo``, ``align.filter``, ``align.ufrm``.
"""
