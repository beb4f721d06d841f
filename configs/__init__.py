"""Experiment configurations: each file defines get_config() and names its launch command."""
