"""The data store every job shares: object storage, and the formats an ingest output root holds.

``objectstore`` is the one way any job reaches S3 or local disk; ``manifest``, ``shards`` and
``volumes`` define what the ingest job writes under an output root and what training, evaluation and
the benchmarks read back (each format with its version); ``files`` writes whole objects.

Why a package of its own: these are the contracts between stages, and every stage imports them.
``braindino`` cannot hold them (it stays plain PyTorch/NumPy, while these need pyarrow, boto3, s3fs
and zarr); ``ingest`` cannot either, because downstream code would then import the producer's
internals to read its output; ``pipelines`` composes jobs and is imported by nobody. ``datastore``
imports only ``braindino`` (for the preprocessing spec and the canonical volume); ``ingest``,
``pipelines``, ``infra``, the tests and the benchmarks import it.
"""
