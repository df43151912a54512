"""``align data synth``: an ensemble of policies answers prompts; reward sources keep the best."""
