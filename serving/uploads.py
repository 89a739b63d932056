"""Reading one uploaded scan from a multipart request, refused with 413 as soon as it passes the size limit.

A declared ``Content-Length`` above the limit is refused before any of the body is read; a body sent
without one is counted as it streams and refused at the first byte past the limit. The parsed form
(whose file part may have spilled into an unnamed temporary file) is always closed, which removes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from serving.errors import ApiError

FIELD = "file"
# The OpenAPI description of the request body (the routes read the raw request to enforce the limit first).
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [FIELD],
    "properties": {FIELD: {"type": "string", "format": "binary", "description":
                           "the scan: .nii, .nii.gz, .mgz, .mgh, .nrrd, or a .zip of one DICOM series"}}}}}}}


def too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large", f"the upload exceeds the {limit} byte limit (ingress max_upload_mb); "
                                             "send a smaller file or raise the limit")


async def limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        yield chunk


async def read_upload(request: Request, limit: int) -> tuple[str, bytes]:
    """``(file name, bytes)`` of the multipart field ``file``; ``ApiError`` 413/400/415 otherwise."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "not_multipart", f"send the scan as multipart/form-data in the field {FIELD!r} "
                                             f"(curl -F {FIELD}=@scan.nii.gz)")
    parser = MultiPartParser(request.headers, limited(request.stream(), limit), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be parsed: {err}") from None
    try:
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "missing_file", f"the form has no file field {FIELD!r}; send the scan as {FIELD}=@PATH")
        return upload.filename or "", await upload.read()
    finally:
        await form.close()
