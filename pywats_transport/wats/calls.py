"""A call described without I/O: method, route template, parameters, body and the model of its answer.

Repositories return calls; the client runs them. The route template travels
with the request as the ``"route"`` extension, so metrics label by template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import WATSError, error_for_status

T = TypeVar("T")
_NOT_A_SEGMENT = frozenset({"", ".", ".."})


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    route: str
    answer: Any  # a pydantic model, list[Model], or None for "no body expected"
    path: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    extensions: dict[str, Any] = field(default_factory=dict)

    def url(self) -> str:
        values = {}
        for name, value in self.path.items():
            text = str(value)
            # Each would name another resource: "" the collection, "." and ".." (dot segments, which
            # URL parsing removes) the collection or its parent.
            if text in _NOT_A_SEGMENT:
                raise ValueError(f"{self.method} {self.route}: path parameter {name!r} must not be {text!r} "
                                 "(empty, '.' or '..' would address another resource)")
            values[name] = quote(text, safe="")
        try:
            return self.route.format(**values)
        except KeyError as exc:
            raise ValueError(f"route {self.route} needs path parameter {exc.args[0]!r}") from None

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        body = self.body.model_dump(mode="json", exclude_none=True) if isinstance(self.body, BaseModel) else self.body
        params = {k: v for k, v in self.params.items() if v is not None}
        return client.build_request(
            self.method, self.url(), params=params or None, json=body,
            extensions={"route": self.route, **self.extensions},
        )

    def parse(self, response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_for_status(response.status_code, _message(response), route=self.route, method=self.method)
        if self.answer is None:
            return None  # type: ignore[return-value]
        try:
            return _adapter(self.answer).validate_python(response.json())  # type: ignore[no-any-return]
        except (ValueError, ValidationError) as exc:
            raise WATSError(
                f"{self.method} {self.route}: unexpected answer ({type(exc).__name__}: {str(exc)[:200]})",
                status=response.status_code, route=self.route, method=self.method,
            ) from None


_adapters: dict[Any, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    adapter = _adapters.get(tp)
    if adapter is None:
        adapter = _adapters[tp] = TypeAdapter(tp)
    return adapter


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return (response.text or response.reason_phrase)[:200]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("Message") or data)[:200]
    return str(data)[:200]
