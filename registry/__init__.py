"""The OCI registry: blob store, metadata, upload sessions and the /v2/ API.

Core modules here are plain Python; only `distribution` (and later the Harbor
API modules) import Flask.
"""
