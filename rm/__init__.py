"""rm package of align-rlhf."""
