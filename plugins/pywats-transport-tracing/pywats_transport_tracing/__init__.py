"""OpenTelemetry spans per request and per retry attempt for pywats-transport."""

from .layers import (
    AsyncAttemptSpanLayer,
    AsyncRequestSpanLayer,
    AttemptSpanLayer,
    RequestSpanLayer,
    TracingSettings,
)

__all__ = ["TracingSettings", "RequestSpanLayer", "AsyncRequestSpanLayer", "AttemptSpanLayer", "AsyncAttemptSpanLayer"]
