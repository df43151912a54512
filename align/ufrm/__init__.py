"""UFRM reward-model training and evaluation as a run (``align rm train``, ``recipes/ufrm.py``):
``run`` fills in what a config leaves empty from the tiny world and evaluates every stage.

Layer 3 (orchestration). May import: ``align.core``, ``rm``, ``align.tiny``.
"""
