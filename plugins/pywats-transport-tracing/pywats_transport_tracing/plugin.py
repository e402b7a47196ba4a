"""Entry point of the ``pywats_transport`` group: two layers under the one switch ``tracing``."""

from __future__ import annotations

from pywats_transport import LayerSpec, hookimpl

from .layers import (
    AsyncAttemptSpanLayer,
    AsyncRequestSpanLayer,
    AttemptSpanLayer,
    RequestSpanLayer,
    TracingSettings,
)

HOOKS = ("request_hook", "response_hook", "async_request_hook", "async_response_hook")


def _provider(ctx: object) -> object:
    """``plugin_context={"tracer_provider": ...}``; the global provider when not given."""
    return getattr(ctx, "extra", {}).get("tracer_provider")


def _hooks(ctx: object) -> dict[str, object]:
    """Hooks with the instrumentation's signatures, from ``plugin_context`` (callables do not live in config)."""
    extra = getattr(ctx, "extra", {})
    return {name: extra[name] for name in HOOKS if extra.get(name) is not None}


@hookimpl
def pywats_transport_layers() -> list[LayerSpec]:
    return [
        LayerSpec(
            name="tracing",
            position=50,  # outside metrics: the request span covers everything the caller waits for
            config_model=TracingSettings,
            sync_factory=lambda inner, s, ctx: RequestSpanLayer(inner, settings=s, tracer_provider=_provider(ctx),
                                                                hooks=_hooks(ctx)),
            async_factory=lambda inner, s, ctx: AsyncRequestSpanLayer(inner, settings=s, tracer_provider=_provider(ctx),
                                                                      hooks=_hooks(ctx)),
            description="OpenTelemetry span per request, named after the route template",
        ),
        LayerSpec(
            name="tracing_attempts",
            position=390,  # inside retry: one CLIENT span per attempt
            config_model=TracingSettings,
            sync_factory=lambda inner, s, ctx: AttemptSpanLayer(inner, settings=s, tracer_provider=_provider(ctx)),
            async_factory=lambda inner, s, ctx: AsyncAttemptSpanLayer(inner, settings=s, tracer_provider=_provider(ctx)),
            description="OpenTelemetry CLIENT span per attempt (re-sends counted)",
            enabled_by="tracing",
        ),
    ]
