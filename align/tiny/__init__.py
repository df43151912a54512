"""The embedded tiny financial world: data generator (``world``), rule-based reward (``reward``),
tiny tokenizer and models (``build``), built once and cached.

Layer 3 (it trains and generates). May import: ``align.core``, ``rm``, ``rollouts``.
"""
