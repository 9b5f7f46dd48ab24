"""The errors medad raises for bad input: each names the file or parameter and what was expected."""


class MedadError(Exception):
    """Base class: a problem a user can fix, explained in one message."""


class DataError(MedadError):
    """A dataset, archive, image or mask is missing, corrupt or inconsistent."""


class ChecksumError(DataError):
    """An archive's SHA-256 differs from the one the project recorded."""


class ConfigError(MedadError, ValueError):
    """A parameter (profile, dataset name, backbone name, device, ...) is not one we accept."""
