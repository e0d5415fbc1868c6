"""sdlab's exceptions: one root, a few meaningful subclasses. Messages say what to do."""

from __future__ import annotations


class SdlabError(Exception):
    """Root of every error sdlab raises on purpose."""


class ModelLoadError(SdlabError):
    """A model could not be found, recognised or loaded."""


class BackendError(SdlabError):
    """A backend (local pipeline, ComfyUI, Replicate) failed to produce images."""

    def __init__(self, message: str, *, backend: str | None = None, job_id: str | None = None):
        super().__init__(message)
        self.backend = backend
        self.job_id = job_id


class MissingDependencyError(SdlabError, ImportError):
    """An optional dependency is needed for this feature."""

    def __init__(self, package: str, feature: str, extra: str | None = None):
        hint = f"pip install 'sdlab[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the optional package '{package}', which is not installed: {hint}")
        self.package = package
