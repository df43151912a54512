"""rollouts package of align-rlhf."""
