"""Minimal PyTorch transcriptions of reference networks, for the converter parity tests."""
