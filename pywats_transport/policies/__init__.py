"""Sans-IO policy cores: pure decisions driven by a clock you pass in, shared by sync and async layers."""

from .retry import Decision, RetryBudget, RetryPolicy, parse_retry_after
from .throttle import ThrottlePolicy, TokenBucket

__all__ = ["Decision", "RetryBudget", "RetryPolicy", "parse_retry_after", "ThrottlePolicy", "TokenBucket"]
