"""Answer-only SFT with a dynamic data mix: ``data`` (labels and mixture-weighted epochs), ``run``
(the recipe behind ``recipes/sft.py``, on TRL's ``SFTTrainer``).

Layer 3 (orchestration). May import: ``align.core``, ``align.tiny``.
"""
