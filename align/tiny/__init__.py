"""The embedded tiny financial world: data generator, rule-based reward, tiny models."""
