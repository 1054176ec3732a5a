"""The current app's `web.app.Services`, for HTTP modules that run inside a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from web.app import Services


def services_of() -> Services:
    return current_app.extensions["cargohold"]  # type: ignore[no-any-return]
