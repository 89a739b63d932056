"""Every refusal the API gives: an HTTP status plus a JSON body ``{"error": CODE, "detail": MESSAGE}``."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A request the service refuses: ``status`` (4xx/5xx), a stable ``code`` and a ``detail`` saying what to do."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


async def api_error_response(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse({"error": error.code, "detail": error.detail}, error.status, headers=error.headers)


async def invalid_request_response(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors())
    return JSONResponse({"error": "invalid_request", "detail": problems}, 422)
