"""align: an RLHF alignment toolkit built on Hugging Face TRL.

Kept light on purpose: importing ``align`` must not pull in the orchestration layer (PPO, PEI),
so that ``rm`` can use ``align.core.data`` cheaply.
"""

__version__ = "0.1.0"
