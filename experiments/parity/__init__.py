"""Per-family parity cases against the reference libraries (see experiments/sampler_parity.py)."""
