"""The ingest job's parts: raw scans in a bucket -> validated canonical volumes, axial slices and a manifest.

``pipelines/ingest.py`` drives it. The package is called ``ingestion`` so that no driver file shadows
it: a driver run as ``python pipelines/ingest.py`` (also under ``ray job submit``, whose workers inherit
the driver's ``sys.path``) has ``pipelines/`` first on its path, where ``ingest`` names the driver itself.
"""
