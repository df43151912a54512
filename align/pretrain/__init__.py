"""Bucketed continued pretraining: ``bucketing`` (composition of instances and its metrics),
``bucket_sampler`` (constant tokens per step), ``run`` (the recipe behind ``recipes/pretrain.py``).

Layer 3 (orchestration). May import: ``align.core``, ``align.tiny``.
"""
