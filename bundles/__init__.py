"""Content bundles: format, build, signing and verification, import,
cluster definitions and releases. Imports only from `registry`."""
