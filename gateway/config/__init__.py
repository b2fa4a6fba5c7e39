"""The one typed configuration: read from the environment once, checked all at once.

``settings`` holds the ``Settings`` struct and ``Secret``; ``environment`` reads them
(``load_settings``, with Better Auth's names and ``*_FILE`` secrets); ``checks`` finds every
problem (``validate``); ``describe`` shows them with their secrets masked.
"""

from gateway.config.checks import REDIS_SCHEMES, validate
from gateway.config.describe import cookie_note, describe, mask_dsn, url_origin
from gateway.config.environment import SECRET_VARIABLES, load_settings
from gateway.config.settings import Secret, Settings
from gateway.core.errors import ConfigError

__all__ = [
    "REDIS_SCHEMES",
    "SECRET_VARIABLES",
    "ConfigError",
    "Secret",
    "Settings",
    "cookie_note",
    "describe",
    "load_settings",
    "mask_dsn",
    "url_origin",
    "validate",
]
