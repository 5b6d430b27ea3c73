"""The Faust monitor: joins predictions with outcomes and watches each model version.

Runtime: it imports :mod:`schemas` and the runtime packages of :mod:`services` (config, kafka, registry,
deployment), never the sandbox, the bench, the ops tools or the CLI. :mod:`streams.app` is the Faust wiring;
every other module is plain Python it feeds.
"""

#: What a monitor worker logs once it has its partitions and its tables are recovered: tools starting one
#: wait for this line (the sandbox, the bench, the tests).
READY = "modelwatch monitor ready"
