"""Confidence-interval filtering of prompts: ``selection`` (pure statistics and selection over a
score matrix), ``run`` (sampling, scoring, caching), ``report``.

Layer 3 (orchestration). May import: ``align.core``, ``rm``, ``rollouts``, ``eval``, ``align.tiny``.
"""
