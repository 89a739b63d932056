"""Writers for ingest outputs: zarr volumes and WebDataset shards."""
