"""The prediction service: consume requests, score them with the commanded model, publish predictions.

    from services.serving import Service
    replica = Service(settings, instance="serve-1").start()   # in-process, in a background thread
    ...
    replica.stop()                                            # finishes the batch, commits, closes

``modelwatch serve --instance serve-1 [--exactly-once]`` runs one replica as a process (SIGTERM stops it
the same way). Modules: :mod:`.service` (the poll loop), :mod:`.batches` (one polled batch: decode, score,
produce, count), :mod:`.intake` (decode, validate, dead letters), :mod:`.scoring` (one model call per
batch, failures isolated), :mod:`.delivery` (at-least-once), :mod:`.transactions` (exactly-once),
:mod:`.clients` (the Kafka clients), :mod:`.control` (commands, model swaps, model events), :mod:`.slot`
(how a loaded version reaches the poll loop), :mod:`.process` (the GC of a serving process),
:mod:`.metrics`, :mod:`.logs`.
"""

from services.serving.batches import Counts
from services.serving.clients import wait_for_broker
from services.serving.service import Service, default_instance, serve

__all__ = ["Counts", "Service", "default_instance", "serve", "wait_for_broker"]
