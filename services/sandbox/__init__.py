"""The sandbox: everything needed to try modelwatch on one machine, and nothing a deployment runs.

- :mod:`services.sandbox.broker`: a real Apache Kafka broker (or three) from Maven Central jars
  (:mod:`services.sandbox.kafka_jars` fetches them, :mod:`services.sandbox.kafka_node` is one node);
- :mod:`services.sandbox.world`: a simulated storefront world (users, items, tastes, purchases);
- :mod:`services.sandbox.storefront`: the storefront simulator, producing requests and outcomes;
- :mod:`services.sandbox.demo`: ``modelwatch demo``, the whole story end to end
  (:mod:`services.sandbox.demo_watcher` reads what it produces);
- :mod:`services.sandbox.processes`: modelwatch's own commands as child processes, and ``wait_for``.

It may import the runtime and the ops tools; the runtime never imports it.
"""
