"""What every auth use case shares: its ports, settings, clock, password hasher and rate limits.

AuthCore (core.py) is the sum of its flows: sessions and accounts there, phone numbers in
phone.py, linked external accounts in sso.py; each flow is a subclass of CoreBase.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.auth.model import AuthSettings, OidcProviders, SmsSender, Store
from services.auth.rules import PasswordHasher, limit_error


class CoreBase:
    """The dependencies every flow uses, given once by main.py."""

    def __init__(
        self,
        store: Store,
        settings: AuthSettings,
        sms: SmsSender,
        oidc: OidcProviders | None = None,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.sms = sms
        self.oidc = oidc
        self.now = clock
        self.hasher = hasher or PasswordHasher(settings.argon2)

    # --- rate limits --------------------------------------------------------------------------

    async def _check_limit(self, key: str, limit: int, window: int, what: str) -> None:
        now = self.now()
        if await self.store.read_counter(key, window, now) >= limit:
            raise limit_error(f"too many {what}; try again later", window - (now % window))

    async def _hit_limit(self, key: str, limit: int, window: int, what: str) -> None:
        """Count one event and refuse it when the window's budget is spent."""
        now = self.now()
        if await self.store.hit_counter(key, window, now) > limit:
            raise limit_error(f"too many {what}; try again later", window - (now % window))
