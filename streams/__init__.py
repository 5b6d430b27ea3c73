"""The Faust monitor: joins predictions with outcomes and watches each model version."""
