"""What one ingest run did: the summary it prints, the metrics it logs and its quarantine list."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class IngestReport:
    """What one run did; ``committed`` is False when there was nothing new (nothing was written)."""

    run_id: str
    manifest_version: int
    committed: bool
    scans_seen: int
    scans_ok: int = 0
    quarantined: list[dict[str, str]] = field(default_factory=list)  # dataset, source_key, reason, detail
    failed: list[dict[str, str]] = field(default_factory=list)  # units the store failed: not committed, retried next run
    store_retries: int = 0  # requests (and whole-object reads) sent again, driver and workers together
    slices: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    shards: list[str] = field(default_factory=list)
    qc: dict[str, str] = field(default_factory=dict)  # dataset -> montage PNG path
    qc_error: str = ""  # why the montages are missing, when the store refused them

    @property
    def scans_processed(self) -> int:
        return self.scans_ok + len(self.quarantined)

    @property
    def scans_per_second(self) -> float:
        return self.scans_processed / self.seconds if self.seconds else 0.0

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(q["reason"] for q in self.quarantined).items()))

    def metrics(self) -> dict[str, float]:
        return {"scans_ok": self.scans_ok, "scans_quarantined": len(self.quarantined), "slices": self.slices,
                "bytes_read": self.bytes_read, "bytes_written": self.bytes_written, "scans_per_s": self.scans_per_second,
                "seconds": self.seconds, "scans_failed_store": len(self.failed), "store_retries": self.store_retries}

    def summary(self) -> str:
        lines = [f"ingest run {self.run_id}: {self.scans_seen} scans listed, {self.scans_processed} new or changed"]
        store = [f"  object store: {self.store_retries} requests retried"]
        if self.failed:
            store[0] += (f"; {len(self.failed)} scans failed after their retries (store_unavailable): not in the "
                         "manifest, the next run retries them")
        if not self.committed:
            what = "no scan landed" if self.failed else "nothing new"
            lines.append(f"  {what}: manifest stays at v{self.manifest_version}, nothing written")
            return "\n".join(lines + store)
        reasons = ", ".join(f"{r}: {n}" for r, n in self.by_reason().items()) or "none"
        lines += [
            f"  scans ok {self.scans_ok}; quarantined {len(self.quarantined)} ({reasons})",
            f"  slices {self.slices} in {len(self.shards)} shards; read {self.bytes_read / 2**20:.1f} MiB, "
            f"wrote {self.bytes_written / 2**20:.1f} MiB",
            f"  {self.seconds:.1f} s, {self.scans_per_second:.2f} scans/s; manifest v{self.manifest_version}",
            *store,
            *([f"  {self.qc_error}"] if self.qc_error else []),
        ]
        return "\n".join(lines)
