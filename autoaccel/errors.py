"""Errors a user can act on: each names the bad value and what would be valid."""


class AutoaccelError(Exception):
    """Base of every error autoaccel raises on purpose; the CLI prints it as one line and exits non-zero."""


class ConfigError(AutoaccelError):
    """A bad option, space file or override."""


class TargetError(AutoaccelError):
    """A model folder that is missing, not a diffusers pipeline, or of an unsupported kind."""


class TechniqueError(AutoaccelError):
    """A technique that cannot apply to this candidate: the trial is recorded as failed with this reason."""


class RecipeError(AutoaccelError):
    """A recipe that cannot be loaded or does not belong to the model it is applied to."""
