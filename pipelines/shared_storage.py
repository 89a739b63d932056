"""Paths that every node of a Ray cluster reads or writes must be object storage once there are two nodes.

A folder path names a folder on the machine that reads the config; on a cluster of several nodes the
workers elsewhere would write checkpoints, shards or volumes that nobody else can see (or read a
manifest that is not there). Jobs call ``require_shared_storage`` right after connecting to Ray, so
such a run is refused before it starts rather than failing (or silently splitting its state) later.
"""

from __future__ import annotations

from pipelines.failures import UserFacingError


def is_shared(uri: str) -> bool:
    """Object storage (``s3://``, ``gs://``, ...) rather than a path on one machine."""
    scheme, separator, _ = uri.partition("://")
    return bool(separator) and scheme not in ("", "file")


def require_shared_storage(paths: dict[str, str]) -> None:
    """Refuse (``UserFacingError``) naming each config key in ``paths`` that holds a node-local path, when the
    connected Ray cluster has more than one live node (one node sees its own folders: no restriction)."""
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    local = {key: path for key, path in paths.items() if path and not is_shared(path)}
    if nodes > 1 and local:
        named = "; ".join(f"{key}={path}" for key, path in local.items())
        raise UserFacingError(f"refused: {named} is a folder on this machine, but the Ray cluster has {nodes} nodes and the "
                 "others cannot see it. Use object storage every node reaches (s3://bucket/prefix, with the "
                 "config's storage endpoint and keys) for these paths.")
