"""modelwatch's services, grouped by what each part is for.

The runtime a deployment runs (it imports :mod:`schemas` and itself, nothing else):

- :mod:`services.config`: every setting, from ``modelwatch.toml`` and ``MODELWATCH_*``;
- :mod:`services.kafka`: the Kafka client layer, the contract's topics, the ACLs;
- :mod:`services.model`: the model, its interaction log, training and evaluation;
- :mod:`services.registry`: immutable, verified model versions;
- :mod:`services.deployment`: the command log and the operator's orders;
- :mod:`services.serving`: the prediction service;
- the monitor is the top-level package :mod:`streams` (runtime too).

Around it, importing the runtime and never imported by it:

- :mod:`services.ops`: tools over the topics (``tail``, ``report``);
- :mod:`services.sandbox`: the local broker, the simulated world and storefront, the demo;
- :mod:`services.bench`: ``modelwatch bench`` and its plain-loop reference;
- :mod:`services.cli`: the ``modelwatch`` command, which may import everything.

``tests/unit/test_layout.py`` fails when an import runs the other way.
"""
