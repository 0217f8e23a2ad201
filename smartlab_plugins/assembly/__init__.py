"""Document assembly, in the worker: a run's documents in, validated batches of events out.

:mod:`~smartlab_plugins.assembly.batching` routes documents by run, validates
them and stacks events into batches; :mod:`~smartlab_plugins.assembly.external`
and :mod:`~smartlab_plugins.assembly.external_fields` read the detector files
that file-backed fields name, under a read policy.
"""
