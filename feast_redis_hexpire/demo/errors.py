"""Errors the demo reports to a client: each names the input field that was wrong."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["InputError", "NotFoundError", "UnavailableError", "quote"]

QUOTE_LIMIT = 80  # characters of a bad value quoted back in an error


def quote(value: Any) -> str:
    """``value`` as JSON (``true``, ``NaN``, ``"abc"``), cut to QUOTE_LIMIT characters: what the
    client sent, in the client's notation, never a Python repr."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1] + "…"


class InputError(ValueError):
    """Bad input; ``field`` is the request field (or ``body``) that was wrong. HTTP 4xx."""

    status = 422

    def __init__(self, field: str | None, message: str, status: int | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        if status is not None:
            self.status = status


class NotFoundError(InputError):
    """A user id that the demo's population does not hold. HTTP 404."""

    status = 404


class UnavailableError(InputError):
    """The store refuses to serve for now (e.g. a view that is not servable yet). HTTP 503."""

    status = 503
