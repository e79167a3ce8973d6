"""Peer-framework GRPO steps (TRL, tunix), each run in a subprocess by ``bench.grpo_step``."""
