"""The evaluation job's parts: configs, task data from the manifest, cached features, reports, head registry."""
