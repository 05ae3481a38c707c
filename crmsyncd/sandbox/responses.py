"""JSON answers and the one error envelope both APIs use."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

JSON_TYPE = "application/json"


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON_TYPE)


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response(status: int, message: str | list[str]) -> web.Response:
    """`{"statusCode": N, "message": ..., "error": "<reason phrase>"}`, as both APIs answer."""
    return json_response({"statusCode": status, "message": message, "error": reason(status)}, status)


class ApiError(Exception):
    """Raised anywhere below a handler; the middleware turns it into the error envelope."""

    def __init__(self, status: int, message: str | list[str], headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        answer = error_response(self.status, self.message)
        answer.headers.update(self.headers)
        return answer
