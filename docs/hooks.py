"""mkdocs hook: the configuration and metrics references are generated from the code at build time."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def _type(field: Any) -> str:
    text = getattr(field.annotation, "__name__", None) or str(field.annotation)
    return text.replace("typing.", "").replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    if field.is_required():
        return "required"
    return f"`{field.default!r}`"


def model_table(model: type[BaseModel], env: str | None) -> str:
    rows = ["| field | type | default | environment variable | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        var = f"`{env.format(name=name.upper())}`" if env else ""
        rows.append(f"| `{name}` | {_type(field)} | {_default(field)} | {var} | {field.description or ''} |")
    return "\n".join(rows)


def config_reference() -> str:
    from pywats_transport.config import BUILTIN_SECTIONS, RedisSettings
    from pywats_transport.service.config import ClientConfig

    parts = []
    for section, model in BUILTIN_SECTIONS.items():
        parts += [f"### `{section}`", "", model_table(model, f"PYWATS_TRANSPORT_{section.upper()}__{{name}}"), ""]
    parts += ["### `redis`", "", "The fleet's Redis, shared by `cache.storage: redis` and `throttle.backend: redis`; "
              "a layer's own `redis_url`, `redis_timeout` or `redis_retry_after` wins over it.", "",
              model_table(RedisSettings, "PYWATS_TRANSPORT_REDIS__{name}"), ""]
    parts += ["### `plugins`, `plugin_settings`", "",
              "`plugins`: names of plugin layers to enable (`PYWATS_TRANSPORT_PLUGINS=a,b`). "
              "`plugin_settings`: one object per plugin name, validated by that plugin's own model.", ""]
    try:
        from pywats_transport_circuitbreaker import BreakerSettings

        parts += ["#### `plugin_settings.circuitbreaker`", "", model_table(BreakerSettings, None), ""]
    except ImportError:
        pass
    try:
        from pywats_transport_tracing import TracingSettings

        parts += ["#### `plugin_settings.tracing`", "", model_table(TracingSettings, None), ""]
    except ImportError:
        pass
    parts += ["## Client service: `ClientConfig`", "", model_table(ClientConfig, "PYWATS_CLIENT_{name}"), ""]
    return "\n".join(parts)


def metrics_reference() -> str:
    from pywats_transport.metrics.reference import SERIES

    rows = ["| series | type | unit | labels | OpenTelemetry name | meaning |", "|---|---|---|---|---|---|"]
    for s in SERIES:
        labels = ", ".join(f"`{label}`" for label in s.labels) or "-"
        rows.append(f"| `{s.name}` | {s.kind} | `{s.unit}` | {labels} | `{s.otel_name}` | {s.description} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- config-reference -->" in markdown:
        markdown = markdown.replace("<!-- config-reference -->", config_reference())
    if "<!-- metrics-reference -->" in markdown:
        markdown = markdown.replace("<!-- metrics-reference -->", metrics_reference())
    return markdown
