"""Errors a user can act on.

Every error axlab raises for bad input is an :class:`AxlabError`: a short statement of
what is wrong plus a ``hint`` saying how to fix it. The app shows both with
``st.error``; the CLI prints both and exits non-zero. They subclass ``ValueError`` so
plain Python callers can catch them the usual way.

``control`` (optional) names the setting the fix is about, in the library's words
(``"label_column"``, ``"overwrite"``, ``"model_source"``...). The hint itself speaks the
caller's language (API / CLI); the app maps ``control`` to the box or checkbox on the page
and says where to make the change instead.
"""

from __future__ import annotations

__all__ = ["AxlabError", "ModelLoadError", "DataError", "UnsupportedModelError", "ExportError"]


class AxlabError(ValueError):
    """A problem with the user's input, with a hint on how to fix it."""

    def __init__(self, message: str, hint: str = "", *, control: str | None = None):
        self.message = message
        self.hint = hint
        self.control = control
        super().__init__(f"{message}\nHow to fix: {hint}" if hint else message)


class ModelLoadError(AxlabError):
    """The model source could not be loaded (id, folder, weights, head)."""


class UnsupportedModelError(AxlabError):
    """The model's architecture is not one axlab knows how to transform."""


class DataError(AxlabError):
    """A dataset or user file is unusable (columns, classes, encoding)."""


class ExportError(AxlabError):
    """An export target is unusable (exists, not writable)."""
