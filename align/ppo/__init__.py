"""PPO with four models (actor, reference, critic, rewards): ``config`` (``PPOConfig``), ``trainer``
(one PPO step and the loop), ``run`` (builds everything a run needs from a config).

Layer 3 (orchestration). May import: ``align.core``, ``rm``, ``rollouts``, ``eval``, ``align.tiny``.
"""
