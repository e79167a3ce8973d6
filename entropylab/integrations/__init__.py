"""Adapters that plug entropylab's losses into other JAX RL frameworks.

Each adapter imports its framework lazily (inside the function that needs it), so importing
``entropylab.integrations`` never requires the framework:

* :mod:`entropylab.integrations.tunix`: ``register(name, loss_or_objective_config, **hparams)``
  registers a tunix policy loss (``GRPOConfig(policy_loss_fn=name)``).
"""

__all__ = ["tunix"]
