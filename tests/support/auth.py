"""The admin every test server bootstraps, and how test clients sign in as it.

``tests/conftest.py`` exports these as ``FLOWYARD_ADMIN_PASSWORD`` (servers in
server mode create the admin from it), ``FLOWYARD_USER`` and ``FLOWYARD_PASSWORD``
(the CLI signs in with them), so every flowyard process a test starts inherits
them; HTTP clients in tests pass ``ADMIN_AUTH``. Tests about missing
credentials remove them explicitly.
"""

from __future__ import annotations

import httpx

ADMIN_NAME = "admin"
ADMIN_PASSWORD = "test-admin-Secret-1"
ADMIN_AUTH = httpx.BasicAuth(ADMIN_NAME, ADMIN_PASSWORD)
ADMIN_ENV = {
    "FLOWYARD_ADMIN_PASSWORD": ADMIN_PASSWORD,
    "FLOWYARD_USER": ADMIN_NAME,
    "FLOWYARD_PASSWORD": ADMIN_PASSWORD,
}
AUTH_ENV_NAMES = (*ADMIN_ENV, "FLOWYARD_TOKEN", "FLOWYARD_WORKER_AUTH")


def without_credentials(env: dict[str, str]) -> dict[str, str]:
    """``env`` minus every variable that would sign a flowyard process in."""
    return {k: v for k, v in env.items() if k not in AUTH_ENV_NAMES}
