"""``modelwatch bench``: how fast modelwatch is, each figure measured beside its reference on one broker.

One module per measurement:

=================  ==========================================================================================
``throughput``     predictions/s and CPU per 1,000 of one replica over recorded requests: ``modelwatch serve``
                   (at-least-once and ``--exactly-once``) beside the pass-through ceiling and the naive
                   service of ``contenders``
``latency``        request produced to prediction consumed, at fixed offered rates
``sweep``          throughput and p99 per ``serve.batch_size``
``monitor``        labelled requests/s through the Faust worker beside ``baseline``'s plain loop
``live``           the monitor's lag behind the simulator, and the control loop: alert, rollback, acks
``steady``         one replica's and the monitor's share of a core and memory slope at a steady offered rate,
                   the monitor's lag, and the replica's CPU per request with a canary and a shadow running
``volume``         the volume curve (``--full``): the monitor's and the service's CPU per item by volume
``soak``           ``--soak``: the monitor's resident memory over half an hour at a steady rate
``experiments``    the experiments' error guarantee, simulated without Kafka (also ``bench-experiments``)
``micro``          codec cost per event, scoring cost per request
=================  ==========================================================================================

Around them: ``rig`` (the run's broker, prefix, registry and child processes), ``workload`` (the traffic),
``cpu`` (a child's CPU time, the machine's CPU pressure), ``tap`` (a reader of output topics), ``stats``
(the pure arithmetic and the targets), ``plans`` (how much each mode measures), ``runner`` (everything in
order), ``summary`` (the JSON's figures), ``table`` and ``plot``.
"""

from services.bench.runner import DEFAULT, FULL, QUICK, BenchPlan, BenchResult, run_bench

__all__ = ["DEFAULT", "FULL", "QUICK", "BenchPlan", "BenchResult", "run_bench"]
