"""The status summary as one self-contained HTML page: the same tables as the text, the QC montages inlined."""

from __future__ import annotations

import base64
from html import escape

from pipelines.status import (DATASET_HEADERS, MODEL_HEADERS, RUN_HEADERS, Status, dataset_rows, model_rows,
                              run_rows)

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
img { max-width: 100%; background: #303030; }
"""


def html_table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if isinstance(c, int) else f"<td>{escape(str(c))}</td>"
                                    for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(status: Status, montages: dict[str, bytes]) -> str:
    """The page for ``status``; ``montages`` (dataset -> PNG bytes) are embedded as data URIs."""
    parts = [f"<h1>braindino status</h1><p>output root <code>{escape(status.output)}</code>, "
             f"MLflow <code>{escape(status.tracking_uri)}</code></p>"]
    if status.manifest_version:
        parts += [f"<h2>Manifest v{status.manifest_version:06d}</h2><p>committed {escape(status.committed_at)}</p>",
                  html_table(DATASET_HEADERS, dataset_rows(status))]
    else:
        parts.append("<h2>Manifest</h2><p>nothing committed yet (run <code>braindino ingest</code>)</p>")
    parts += ["<h2>Quarantined scans by reason</h2>",
              html_table(["reason", "scans"], [[r, n] for r, n in status.quarantined.items()]) if status.quarantined
              else "<p>none</p>"]
    parts += ["<h2>Last runs</h2>", html_table(RUN_HEADERS, run_rows(status)) if status.runs else "<p>none</p>"]
    parts += ["<h2>Registered models</h2>", html_table(MODEL_HEADERS, model_rows(status)) if status.models else "<p>none</p>"]
    if montages:
        parts.append("<h2>QC montages</h2><p>Mid-axial slices: anterior up, the subject's left on the left.</p>")
        for dataset, png in sorted(montages.items()):
            data = base64.b64encode(png).decode()
            parts.append(f"<h3>{escape(dataset)}</h3><img alt=\"QC montage of {escape(dataset)}\" "
                         f"src=\"data:image/png;base64,{data}\">")
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>braindino status</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
