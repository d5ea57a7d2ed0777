"""Errors the demo reports to a client: each names the input field that was wrong."""

from __future__ import annotations

__all__ = ["InputError", "NotFoundError"]


class InputError(ValueError):
    """Bad input; ``field`` is the request field (or ``body``) that was wrong. HTTP 4xx."""

    status = 422

    def __init__(self, field: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        if status is not None:
            self.status = status


class NotFoundError(InputError):
    """A user id that the demo's population does not hold. HTTP 404."""

    status = 404
