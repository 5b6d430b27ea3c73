"""Deploying and its history: the command log on ``rec.model-commands`` and the orders an operator gives.

- :mod:`services.deployment.commands`: the command event (made, signed, verified, published) and the
  :class:`~services.deployment.commands.History` every reader rebuilds from the log;
- :mod:`services.deployment.orders`: ``deploy`` and ``rollback`` as the CLI and the demo issue them, and
  the timeline of who served what when.

Runtime: it may import :mod:`schemas`, :mod:`services.config`, :mod:`services.kafka` and
:mod:`services.registry`.
"""
