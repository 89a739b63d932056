"""Ingest: raw scans in a bucket -> validated canonical volumes, axial slices and a manifest."""
