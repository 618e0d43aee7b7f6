"""User-facing errors.

Anything a user can cause (a bad config value, a missing folder, a corrupt file) is raised as a
`CCNError` whose message names the problem and the fix. The command line prints it on one line and
exits with status 2; library users catch it like any exception.
"""


class CCNError(Exception):
    """A problem the user can fix; the message says what it is and what to do."""


class ConfigError(CCNError):
    """An unknown key, a wrong type or an impossible value in the configuration."""


class DataError(CCNError):
    """Missing, corrupt or inconsistent data."""


class WriteError(CCNError):
    """A file could not be written (disk full, read-only folder, no permission); the previous
    version of the file, if any, is unchanged."""
