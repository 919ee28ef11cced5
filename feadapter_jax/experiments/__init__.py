"""Experiments built on the trainer: drivers that run several configs and report them together."""
