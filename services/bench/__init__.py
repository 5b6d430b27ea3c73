"""``modelwatch bench``: how fast modelwatch is, each figure measured beside its reference on one broker.

One module per measurement:

=================  ==========================================================================================
``throughput``     predictions/s and CPU per 1,000 of one replica over recorded requests: ``modelwatch serve``
                   (at-least-once and ``--exactly-once``) beside the pass-through ceiling and the naive
                   service of ``contenders``
``latency``        request produced to prediction consumed, at fixed offered rates
``monitor``        labelled requests/s through the Faust worker beside a plain consumer with the same logic
``live``           the monitor's lag behind the simulator, and the control loop: alert, rollback, acks
``micro``          codec cost per event, scoring cost per request
=================  ==========================================================================================

``rig`` holds the run's broker, prefix, registry and child processes; ``stats`` the pure arithmetic and the
targets; ``runner`` runs it all in order; ``table`` and ``plot`` show the result.
"""

from services.bench.runner import FULL, QUICK, BenchPlan, BenchResult, run_bench

__all__ = ["FULL", "QUICK", "BenchPlan", "BenchResult", "run_bench"]
