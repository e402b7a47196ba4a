"""Built-in layers, each registered as a plugin through the same hook third-party plugins use."""
