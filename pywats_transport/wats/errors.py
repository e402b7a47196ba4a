"""The WATS client's exceptions: each carries the HTTP status and the route template, never the token."""

from __future__ import annotations


class WATSError(Exception):
    def __init__(self, message: str, *, status: int | None = None, route: str | None = None, method: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.route = route
        self.method = method


class NotFoundError(WATSError):
    """404: the product, report, asset or unit does not exist."""


class UnauthorizedError(WATSError):
    """401/403: the token is missing, wrong or lacks the right."""


class RequestValidationError(WATSError):
    """400/409/422: the server refused the request's content."""


class ServerError(WATSError):
    """5xx (after retries): the server failed."""


class WATSConnectionError(WATSError):
    """The server could not be reached (after retries), or the connection dropped."""


def error_for_status(status: int, message: str, *, route: str, method: str) -> WATSError:
    cls: type[WATSError]
    if status == 404:
        cls = NotFoundError
    elif status in (401, 403):
        cls = UnauthorizedError
    elif status in (400, 409, 422):
        cls = RequestValidationError
    elif status >= 500:
        cls = ServerError
    else:
        cls = WATSError
    return cls(f"{method} {route} failed with {status}: {message}", status=status, route=route, method=method)
