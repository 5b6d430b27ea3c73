"""Ops tools over the topics: what an operator runs beside a deployment to see what it does.

- :mod:`services.ops.console`: the console behind ``modelwatch tail``;
- :mod:`services.ops.report`: ``modelwatch report``, the timeline as a picture and an HTML page, over
  :mod:`services.ops.timeline` (the events in order) and :mod:`services.ops.chart` (the picture);
- :mod:`services.ops.status`: ``modelwatch status``, the fleet at a glance.

They read the contract's topics with their own consumers and change nothing. They may import the
runtime (:mod:`schemas`, :mod:`services.config`, :mod:`services.kafka`, :mod:`services.deployment`), never
the sandbox, the bench or the CLI.
"""
