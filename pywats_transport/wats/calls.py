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
from .models import ANSWER

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
            if value is None:  # str() would send the word "None"
                raise ValueError(f"{self.method} {self.route}: path parameter {name!r} must be given, got None")
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

    def parse(self, response: httpx.Response, secrets: tuple[str, ...] = ()) -> T:
        """The answer as the call's model; an error for a failed status or an answer of another shape. The
        server's words in an error are the caller's to read, but never one of ``secrets`` (a server may
        echo the token it refused): each is masked before the message is cut to length."""
        if response.status_code >= 400:
            message = cut(scrubbed(_message(response), secrets))
            raise error_for_status(response.status_code, message, route=self.route, method=self.method)
        if self.answer is None:
            return None  # type: ignore[return-value]
        try:
            return _adapter(self.answer).validate_python(response.json(), context=ANSWER)  # type: ignore[no-any-return]
        except (ValueError, ValidationError) as exc:
            raise WATSError(
                f"{self.method} {self.route}: unexpected answer ({type(exc).__name__}: "
                f"{cut(scrubbed(_problem(exc), secrets))})",
                status=response.status_code, route=self.route, method=self.method,
            ) from None


_adapters: dict[Any, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    adapter = _adapters.get(tp)
    if adapter is None:
        adapter = _adapters[tp] = TypeAdapter(tp)
    return adapter


def scrubbed(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _problem(exc: ValueError) -> str:
    """What is wrong with an answer: where and what, never the values found there (pydantic shows them cut
    in the middle, where no mask can find them)."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(part) for part in e['loc']) or 'answer'}: {e['msg']}"
                         for e in exc.errors(include_input=False, include_url=False))
    return str(exc)


def cut(text: str) -> str:
    return text[:200]


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text or response.reason_phrase
    if isinstance(data, dict):
        return str(data.get("message") or data.get("Message") or data)
    return str(data)
