"""Adapters to other engines. Each imports its host lazily, so the core never depends on it."""
