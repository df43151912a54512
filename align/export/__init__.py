"""``align export``: a run's model as a standalone Hugging Face model directory.

``locate`` finds what to export in a run directory, a checkpoint or a model directory (pure path
logic, plus the run's ``config.yaml``); ``write`` writes the export (LoRA merged, safetensors,
the run's chat template, a generation config), whole or not at all.

Layer 3 (orchestration). May import: ``align.core`` (and PEFT, lazily, for LoRA adapters).
"""
