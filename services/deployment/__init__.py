"""Deploying and its history: the command log on ``rec.model-commands`` and the orders an operator gives.

- :mod:`services.deployment.commands`: the command event (made, signed, verified, published) and the
  :class:`~services.deployment.commands.History` every reader rebuilds from the log, in offset order;
- :mod:`services.deployment.state`: the deployment state: the commanded version apart from what the live
  replicas serve, each replica's answer to each command, versions no replica could load, the rollback target;
- :mod:`services.deployment.follower`: reading that state from Kafka, one way for the replicas, the monitor
  and the CLI (the command log's one partition from the beginning, plus the replicas' events);
- :mod:`services.deployment.experiments`: the experiment a shadow or canary starts beside the active
  version, and its promote or abort, as a function of the applied commands;
- :mod:`services.deployment.orders`: ``deploy``, ``rollback``, shadow, canary, ``promote`` and ``abort`` as
  the CLI and the demo issue them, and the timeline of who served what when.

Runtime: it may import :mod:`schemas`, :mod:`services.config`, :mod:`services.kafka` and
:mod:`services.registry`.
"""
