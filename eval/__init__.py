"""eval package of align-rlhf."""
