"""The ingest job's parts: raw scans in a bucket -> validated canonical volumes, axial slices and a manifest.

``pipelines/ingestion.py`` drives it. The driver is not called ``ingest.py``: a driver run as
``python pipelines/JOB.py`` (also under ``ray job submit``, whose workers inherit the driver's
``sys.path``) has ``pipelines/`` first on its path, where a file ``ingest.py`` would shadow this package.
"""
