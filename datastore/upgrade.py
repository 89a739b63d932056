"""The one upgrade step of an output root's manifest: layout 1 -> ``MANIFEST_VERSION`` (2).

Layout 2 requires every commit to record the preprocessing spec (``PreprocessSpec`` version 2). A
layout-1 commit that recorded a spec keeps it (converted to version 2); one that did not takes the spec
its stored volumes name in their zarr attributes, all of which must name the same one; a root without
any stored volume takes the caller's ``spec``. The upgrade commits a new version naming the same
tables, so nothing else changes. ``braindino ingest`` runs it before anything else, and
``braindino ingest --upgrade-manifest`` runs only it.
"""

from __future__ import annotations

import json
import time

from braindino.volumes import PreprocessSpec
from datastore.manifest import MANIFEST_VERSION, Commit, ManifestLayoutError, ManifestStore
from datastore.objectstore import ObjectStoreConfig
from datastore.volumes import open_root, volume_attrs


def upgrade_manifest(root: str, storage: ObjectStoreConfig, spec: PreprocessSpec) -> int | None:
    """Bring the manifest under ``root`` to the current layout; returns the version committed, or None
    when there was nothing to upgrade (no manifest, or the current layout already)."""
    store = ManifestStore(root, storage)
    versions = store.versions()
    if not versions:
        return None
    record = store.commit_record(versions[-1])
    if record.get("schema_version") == MANIFEST_VERSION:
        return None
    if record.get("schema_version") != 1:
        raise ManifestLayoutError(f"{store.commit_path(versions[-1])} has manifest schema "
                                  f"{record.get('schema_version')}; this code upgrades only schema 1")
    recorded = record.get("preprocess") or stored_volumes_spec(root, storage, store, record) or json.loads(spec.to_json())
    upgraded = PreprocessSpec.from_json(json.dumps(recorded))
    return store.append(Commit(versions[-1] + 1, record["run_id"], record["tables"], record["datasets"],
                               json.loads(upgraded.to_json()), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))


def stored_volumes_spec(root: str, storage: ObjectStoreConfig, store: ManifestStore, record: dict) -> dict | None:
    """The one preprocessing spec the stored volumes of a layout-1 commit name (None when it has none)."""
    scans = store.read_tables(record["tables"])["scans"]
    paths = [row["zarr_path"] for row in scans.to_pylist() if row["status"] == "ok"]
    if not paths:
        return None
    volumes = open_root(root, storage, mode="r")
    specs = {json.dumps(volume_attrs(volumes, path)["provenance"].get("preprocess_spec"), sort_keys=True) for path in paths}
    if len(specs) > 1 or specs == {"null"}:
        raise ValueError(f"{root}: manifest v{record['version']} records no preprocessing spec and its volumes "
                         f"name {' / '.join(sorted(specs))}; ingest into a new output root")
    return json.loads(specs.pop())
