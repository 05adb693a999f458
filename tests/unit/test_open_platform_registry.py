"""The app registry's rules with an in-memory store: validation and the SSRF guard, hashed client
secrets, webhook secret rotation with overlap, owner-only access, concurrent edits."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from plumbing.domain_errors import DomainError, ErrorKind
from services.open_platform.core import (
    DEFAULT_WEBHOOK_OVERLAP_MS,
    MAX_APPS_PER_OWNER,
    App,
    AppRegistry,
    AppSettings,
    check_redirect_uri,
    check_webhook_url,
    hash_secret,
    secret_matches,
    validate_settings,
)

pytestmark = pytest.mark.unit

ALICE = "@alice:localhost"
BOB = "@bob:localhost"


class FakeStore:
    """The AppStore protocol over a dict; the events a real store would write go to `events`."""

    def __init__(self) -> None:
        self.apps: dict[str, App] = {}
        self.events: list[tuple[str, str]] = []
        self.interfere: App | None = None  # written "concurrently" just before the next replace

    async def insert(self, app: App, max_per_owner: int) -> bool:
        if sum(a.owner == app.owner for a in self.apps.values()) >= max_per_owner:
            return False
        self.apps[app.client_id] = app
        self.events.append((app.client_id, "registered"))
        return True

    async def get(self, client_id: str) -> App | None:
        return self.apps.get(client_id)

    async def list_by_owner(self, owner: str) -> list[App]:
        return sorted((a for a in self.apps.values() if a.owner == owner), key=lambda a: -a.created_ms)

    async def replace(self, app: App, change: str) -> bool:
        if self.interfere is not None:
            self.apps[self.interfere.client_id], self.interfere = self.interfere, None
        if self.apps[app.client_id].version != app.version - 1:
            return False
        self.apps[app.client_id] = app
        self.events.append((app.client_id, change))
        return True

    async def delete(self, app: App) -> None:
        del self.apps[app.client_id]
        self.events.append((app.client_id, "deleted"))


def settings(**overrides: object) -> AppSettings:
    values: dict[str, object] = {
        "name": "Price Compare",
        "description": "Cheapest hotpot in town",
        "icon_url": "https://partner.example/icon.png",
        "homepage_url": "https://partner.example/",
        "redirect_uris": ["https://partner.example/callback"],
        "webhook_url": "https://partner.example/webhook",
        "scopes": ["profile:read", "cards:write"],
    }
    values.update(overrides)
    return validate_settings(**values, allow_loopback_webhooks=False)  # type: ignore[arg-type]


@pytest.fixture
def registry() -> tuple[AppRegistry, FakeStore]:
    store = FakeStore()
    ids = (f"APP{n:04d}" for n in itertools.count())
    return AppRegistry(store, new_id=lambda: next(ids)), store


def code_of(error: pytest.ExceptionInfo[DomainError]) -> tuple[ErrorKind, str]:
    return error.value.kind, error.value.errcode


async def test_create_returns_secrets_once_and_stores_only_the_client_secret_hash(registry) -> None:
    reg, store = registry
    created = await reg.create(ALICE, settings(), public_client=False, now_ms=1000)
    stored = store.apps[created.app.client_id]
    assert created.client_secret.startswith("lwcs_") and len(created.client_secret) > 40
    assert stored.client_secret_hash == hash_secret(created.client_secret) != created.client_secret
    assert secret_matches(created.client_secret, stored.client_secret_hash)
    assert not secret_matches(created.client_secret + "x", stored.client_secret_hash)
    assert created.webhook_secret.startswith("whsec_")
    assert stored.signing_secrets(1000) == [created.webhook_secret]
    assert store.events == [(created.app.client_id, "registered")]


async def test_public_clients_get_no_client_secret(registry) -> None:
    reg, _ = registry
    created = await reg.create(ALICE, settings(), public_client=True, now_ms=1)
    assert created.client_secret == "" and created.app.client_secret_hash == ""
    assert not secret_matches("", created.app.client_secret_hash)
    with pytest.raises(DomainError) as error:
        await reg.rotate_client_secret(ALICE, created.app.client_id, now_ms=2)
    assert code_of(error) == (ErrorKind.INVALID, "M_INVALID_PARAM")


async def test_only_the_owner_sees_or_changes_an_app_and_others_get_not_found(registry) -> None:
    reg, store = registry
    app = (await reg.create(ALICE, settings(), public_client=False, now_ms=1)).app
    for attempt in (
        reg.get(BOB, app.client_id),
        reg.update(BOB, app.client_id, settings(name="Hijacked"), now_ms=2),
        reg.set_suspended(BOB, app.client_id, True, now_ms=2),
        reg.delete(BOB, app.client_id),
        reg.rotate_webhook_secret(BOB, app.client_id, 0, now_ms=2),
        reg.get(ALICE, "NO-SUCH-APP"),
    ):
        with pytest.raises(DomainError) as error:
            await attempt
        assert code_of(error) == (ErrorKind.NOT_FOUND, "M_NOT_FOUND")
    assert await reg.list(BOB) == []
    assert store.apps[app.client_id] == app


async def test_edit_suspend_resume_delete(registry) -> None:
    reg, store = registry
    app = (await reg.create(ALICE, settings(), public_client=False, now_ms=1)).app
    edited = await reg.update(ALICE, app.client_id, settings(name="Renamed", scopes=["payments"]), now_ms=2)
    assert (edited.settings.name, edited.settings.scopes, edited.version) == ("Renamed", ("payments",), 2)
    assert (await reg.set_suspended(ALICE, app.client_id, True, now_ms=3)).suspended
    again = await reg.set_suspended(ALICE, app.client_id, True, now_ms=4)
    assert again.suspended and again.updated_ms == 3  # a no-op writes nothing
    assert not (await reg.set_suspended(ALICE, app.client_id, False, now_ms=5)).suspended
    await reg.delete(ALICE, app.client_id)
    assert await reg.list(ALICE) == []
    assert [change for _, change in store.events] == ["registered", "updated", "suspended", "resumed", "deleted"]


async def test_an_edit_never_undoes_a_concurrent_suspension(registry) -> None:
    reg, store = registry
    app = (await reg.create(ALICE, settings(), public_client=False, now_ms=1)).app
    store.interfere = replace(app, suspended=True, version=app.version + 1)
    edited = await reg.update(ALICE, app.client_id, settings(name="Renamed"), now_ms=2)
    assert edited.suspended and edited.settings.name == "Renamed" and edited.version == 3
    assert store.apps[app.client_id] == edited


async def test_rotating_the_webhook_secret_keeps_the_old_one_signing_for_the_overlap(registry) -> None:
    reg, _ = registry
    created = await reg.create(ALICE, settings(), public_client=False, now_ms=0)
    rotated, new = await reg.rotate_webhook_secret(ALICE, created.app.client_id, 60_000, now_ms=1000)
    assert new != created.webhook_secret
    assert rotated.signing_secrets(1000) == [new, created.webhook_secret]
    assert rotated.previous_expires_ms(1000) == 61_000
    assert rotated.signing_secrets(61_000) == [new]
    assert rotated.previous_expires_ms(61_000) == 0
    # Rotating again within the overlap: the first secret keeps its own deadline.
    twice, newest = await reg.rotate_webhook_secret(ALICE, created.app.client_id, 0, now_ms=2000)
    assert twice.signing_secrets(2000) == [newest, new, created.webhook_secret]
    assert twice.signing_secrets(61_000) == [newest, new]
    assert twice.signing_secrets(2000 + DEFAULT_WEBHOOK_OVERLAP_MS) == [newest]
    with pytest.raises(DomainError):
        await reg.rotate_webhook_secret(ALICE, created.app.client_id, -1, now_ms=3000)


async def test_rotating_the_client_secret_stops_the_old_one(registry) -> None:
    reg, _ = registry
    created = await reg.create(ALICE, settings(), public_client=False, now_ms=0)
    rotated, secret = await reg.rotate_client_secret(ALICE, created.app.client_id, now_ms=1)
    assert secret_matches(secret, rotated.client_secret_hash)
    assert not secret_matches(created.client_secret, rotated.client_secret_hash)


async def test_an_owner_has_at_most_the_cap_of_apps(registry) -> None:
    reg, _ = registry
    for n in range(MAX_APPS_PER_OWNER):
        await reg.create(ALICE, settings(), public_client=False, now_ms=n)
    with pytest.raises(DomainError) as error:
        await reg.create(ALICE, settings(), public_client=False, now_ms=99)
    assert code_of(error) == (ErrorKind.FORBIDDEN, "M_FORBIDDEN")
    assert len(await reg.list(ALICE)) == MAX_APPS_PER_OWNER


@pytest.mark.parametrize(
    "url",
    [
        "http://partner.example/hook",
        "https://10.0.0.5/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[fe80::1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://0.0.0.0/hook",
        "https://user:pw@partner.example/hook",
        "ftp://partner.example/hook",
        "partner.example/hook",
    ],
)
def test_the_ssrf_guard_refuses_plain_http_private_link_local_and_loopback_targets(url: str) -> None:
    with pytest.raises(DomainError) as error:
        check_webhook_url(url, allow_loopback=False)
    assert code_of(error) == (ErrorKind.INVALID, "M_INVALID_PARAM")


def test_loopback_webhooks_only_behind_the_development_setting() -> None:
    assert check_webhook_url("http://127.0.0.1:8123/hook", allow_loopback=True) == "http://127.0.0.1:8123/hook"
    assert check_webhook_url("https://partner.example/hook", allow_loopback=False) == "https://partner.example/hook"
    with pytest.raises(DomainError):
        check_webhook_url("https://10.1.2.3/hook", allow_loopback=True)  # private stays private
    with pytest.raises(DomainError, match="loopback"):
        check_webhook_url("https://[::1]/hook", allow_loopback=False)


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("https://partner.example/cb", True),
        ("http://127.0.0.1:9000/cb", True),
        ("http://partner.example/cb", False),
        ("https://partner.example/cb#frag", False),
        ("javascript:alert(1)", False),
        ("/relative", False),
    ],
)
def test_redirect_uris_are_absolute_https_or_loopback(uri: str, ok: bool) -> None:
    if ok:
        assert check_redirect_uri(uri) == uri
    else:
        with pytest.raises(DomainError):
            check_redirect_uri(uri)


def test_settings_validation() -> None:
    assert settings(scopes=["payments", "profile:read", "payments"]).scopes == ("profile:read", "payments")
    for bad in (
        {"name": "  "},
        {"name": "x" * 65},
        {"scopes": ["address_book:read"]},
        {"icon_url": "http://partner.example/i.png"},
        {"redirect_uris": [f"https://p.example/{n}" for n in range(11)]},
        {"description": "bell\x07"},
    ):
        with pytest.raises(DomainError):
            settings(**bad)
