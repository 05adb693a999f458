"""The auth rules (services/auth/core.py) with in-memory fakes: no network, no database."""

from __future__ import annotations

import pytest

from plumbing.domain_errors import DomainError, Errcode
from services.auth.model import (
    AccountDeactivatedEvent,
    PhoneUnboundEvent,
    PhoneVerifiedEvent,
    ProfileChangedEvent,
    TokenRevokedEvent,
    UserRegisteredEvent,
)
from services.auth.rules import digest, normalise_phone, parse_username, pkce_pair
from tests.unit.auth_fakes import make_core

pytestmark = pytest.mark.unit

PW = "a good long password"


async def _code_error(awaitable, code: Errcode) -> DomainError:
    with pytest.raises(DomainError) as caught:
        await awaitable
    assert caught.value.errcode == code, caught.value.message
    return caught.value


# --- usernames and phone numbers -----------------------------------------------------------------


@pytest.mark.parametrize("username", ["alice", "@alice:laiwang.test", "a.b_c=d-e/f+g", "0123"])
def test_valid_usernames(username: str) -> None:
    assert parse_username(username, "laiwang.test").endswith(":laiwang.test")


@pytest.mark.parametrize(
    "username",
    [
        "Alice",
        "al ice",
        "@alice:elsewhere.org",
        "_reserved",
        "app_01abc",
        "",
        "ali#ce",
        "x" * 300,
        "@:laiwang.test",
        "名字",
    ],
)
def test_invalid_usernames(username: str) -> None:
    with pytest.raises(DomainError) as caught:
        parse_username(username, "laiwang.test")
    assert caught.value.errcode == Errcode.INVALID_USERNAME


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("13800138000", "CN", "+8613800138000"),
        ("138 0013 8000", "CN", "+8613800138000"),
        ("+86 138-0013-8000", "US", "+8613800138000"),
        ("8613800138000", "CN", "+8613800138000"),  # Matrix msisdn form, no "+"
        ("(202) 555-0125", "US", "+12025550125"),
    ],
)
def test_phone_numbers_are_normalised_to_e164(raw: str, region: str, e164: str) -> None:
    assert normalise_phone(raw, region) == e164


@pytest.mark.parametrize("raw", ["12345", "not a number", "", "+86 000", "1" * 40])
def test_invalid_phone_numbers(raw: str) -> None:
    with pytest.raises(DomainError) as caught:
        normalise_phone(raw, "CN")
    assert caught.value.errcode == Errcode.INVALID_PARAM


def test_pkce_challenge_is_s256_of_the_verifier() -> None:
    import base64
    import hashlib

    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# --- registration and login ------------------------------------------------------------------------


async def test_register_stores_an_argon2id_hash_and_announces_the_user() -> None:
    core, store, _, _ = make_core()
    user_id, session = await core.register("alice", PW, device_name="phone")
    assert user_id == "@alice:laiwang.test" and session is not None
    stored = store.users[user_id]
    assert stored.password_hash.startswith("$argon2id$") and PW not in stored.password_hash
    assert store.events[0] == UserRegisteredEvent(user_id, "alice", core.now())
    # Only the token's digest is stored.
    assert digest(session.access_token) in store.access and session.access_token not in str(store.access)
    await _code_error(core.register("alice", PW), Errcode.USER_IN_USE)
    await _code_error(core.register("bob", "short"), Errcode.WEAK_PASSWORD)


async def test_inhibit_login_creates_no_session() -> None:
    core, store, _, _ = make_core()
    _, session = await core.register("carol", PW, inhibit_login=True)
    assert session is None and not store.access and not store.devices


async def test_login_by_user_id_or_localpart_and_wrong_password() -> None:
    core, _, _, _ = make_core()
    user_id, _ = await core.register("dave", PW)
    for identifier in ("dave", "@dave:laiwang.test", "DAVE"):
        session = await core.login_password(user=identifier, password=PW)
        assert session.user_id == user_id
        assert (await core.introspect(session.access_token)).user_id == user_id
    await _code_error(core.login_password(user="dave", password="wrong one!"), Errcode.FORBIDDEN)
    # An unknown user gets the same answer as a wrong password.
    await _code_error(core.login_password(user="nobody", password=PW), Errcode.FORBIDDEN)


async def test_password_guessing_is_limited_per_account_and_per_address() -> None:
    core, _, _, clock = make_core(
        login_failures_per_account=3, login_failures_per_address=5, login_failure_window_seconds=600
    )
    await core.register("erin", PW)
    await core.register("frank", PW)
    for _ in range(3):
        await _code_error(
            core.login_password(user="erin", password="guess!!!", client_address="10.0.0.1"), Errcode.FORBIDDEN
        )
    limited = await _code_error(
        core.login_password(user="erin", password=PW, client_address="10.0.0.2"), Errcode.LIMIT_EXCEEDED
    )
    assert 0 < limited.retry_after_ms <= 600_000
    # Per address: two more failures on another account exhaust 10.0.0.1's budget of 5.
    for _ in range(2):
        await _code_error(
            core.login_password(user="frank", password="guess!!!", client_address="10.0.0.1"), Errcode.FORBIDDEN
        )
    await _code_error(core.login_password(user="frank", password=PW, client_address="10.0.0.1"), Errcode.LIMIT_EXCEEDED)
    assert (await core.login_password(user="frank", password=PW, client_address="10.0.0.3")).user_id
    clock.advance(601)
    assert (await core.login_password(user="erin", password=PW, client_address="10.0.0.1")).user_id


async def test_relogin_with_the_same_device_id_replaces_its_tokens() -> None:
    core, store, _, _ = make_core()
    await core.register("gina", PW, device_id="PHONE")
    first = await core.login_password(user="gina", password=PW, device_id="PHONE")
    second = await core.login_password(user="gina", password=PW, device_id="PHONE")
    assert not (await core.introspect(first.access_token)).active
    assert (await core.introspect(second.access_token)).active
    revoked = [e for e in store.events if isinstance(e, TokenRevokedEvent)]
    assert revoked and revoked[-1].device_id == "PHONE" and revoked[-1].token_ids == (first.token_id,)


# --- tokens ---------------------------------------------------------------------------------------------


async def test_refresh_rotation_expiry_and_reuse_detection() -> None:
    core, store, _, clock = make_core(access_token_ttl_seconds=60)
    await core.register("hank", PW)
    session = await core.login_password(user="hank", password=PW, want_refresh=True)
    assert session.expires_in_ms == 60_000 and session.refresh_token
    clock.advance(61)
    expired = await core.introspect(session.access_token)
    assert not expired.active and expired.inactive_reason == "expired"

    rotated = await core.refresh(session.refresh_token)
    assert rotated.refresh_token != session.refresh_token and rotated.device_id == session.device_id
    assert (await core.introspect(rotated.access_token)).active
    assert not (await core.introspect(session.access_token)).active

    # The old refresh token was used once; presenting it again signs the device out.
    await _code_error(core.refresh(session.refresh_token), Errcode.UNKNOWN_TOKEN)
    assert not (await core.introspect(rotated.access_token)).active
    await _code_error(core.refresh(rotated.refresh_token), Errcode.UNKNOWN_TOKEN)
    assert any(isinstance(e, TokenRevokedEvent) and e.reason == "refresh_token_reuse" for e in store.events)
    await _code_error(core.refresh(""), Errcode.UNKNOWN_TOKEN)


async def test_tokens_without_refresh_do_not_expire() -> None:
    core, _, _, clock = make_core(access_token_ttl_seconds=1)
    _, session = await core.register("ivy", PW)
    clock.advance(10 * 365 * 86400)
    assert (await core.introspect(session.access_token)).active
    assert (await core.introspect("lwa_made_up")).inactive_reason == "unknown"


async def test_logout_logout_all_and_password_change_revoke_and_announce() -> None:
    core, store, _, _ = make_core()
    _, a = await core.register("jack", PW, device_id="A")
    b = await core.login_password(user="jack", password=PW, device_id="B")
    c = await core.login_password(user="jack", password=PW, device_id="C")
    await core.logout("@jack:laiwang.test", "B")
    assert not (await core.introspect(b.access_token)).active
    assert {d.device_id for d in await core.list_devices("@jack:laiwang.test")} == {"A", "C"}
    event = store.events[-1]
    assert isinstance(event, TokenRevokedEvent) and event.token_ids == (b.token_id,) and not event.all_devices

    await _code_error(
        core.change_password(
            "@jack:laiwang.test", "wrong!!!", "new password 1", logout_devices=True, keep_device_id="A"
        ),
        Errcode.FORBIDDEN,
    )
    await core.change_password("@jack:laiwang.test", PW, "new password 1", logout_devices=True, keep_device_id="A")
    assert (await core.introspect(a.access_token)).active
    assert not (await core.introspect(c.access_token)).active
    await _code_error(core.login_password(user="jack", password=PW), Errcode.FORBIDDEN)
    d = await core.login_password(user="jack", password="new password 1")

    await core.logout_all("@jack:laiwang.test")
    assert not (await core.introspect(a.access_token)).active and not (await core.introspect(d.access_token)).active
    event = store.events[-1]
    assert isinstance(event, TokenRevokedEvent) and event.all_devices and event.reason == "logout_all"


async def test_delete_devices_needs_the_password() -> None:
    core, _, _, _ = make_core()
    await core.register("kate", PW, device_id="A")
    b = await core.login_password(user="kate", password=PW, device_id="B")
    await _code_error(core.delete_devices("@kate:laiwang.test", ["B"], "nope nope"), Errcode.FORBIDDEN)
    assert (await core.introspect(b.access_token)).active
    await core.delete_devices("@kate:laiwang.test", ["B"], PW)
    assert not (await core.introspect(b.access_token)).active
    await _code_error(core.get_device("@kate:laiwang.test", "B"), Errcode.NOT_FOUND)


# --- phone verification ---------------------------------------------------------------------------------


async def _verified(core, sms, number: str = "13800138000", secret: str = "s3cret") -> str:
    session = await core.request_phone_code("CN", number, secret, 1)
    await core.submit_phone_code(session.sid, secret, sms.last_code(session.msisdn))
    return session.sid


async def test_code_is_six_digits_sent_once_per_attempt_and_stored_only_as_a_digest() -> None:
    core, store, sms, _ = make_core()
    session = await core.request_phone_code("CN", "13800138000", "s3cret", 1)
    assert session.msisdn == "+8613800138000"
    code = sms.last_code("+8613800138000")
    assert len(code) == 6 and code.isdigit()
    assert code not in str(store.phone)
    # The same request again (same secret, same send_attempt): same session, no second SMS.
    again = await core.request_phone_code("CN", "+86 138 0013 8000", "s3cret", 1)
    assert again.sid == session.sid and len(sms.sent) == 1


async def test_resend_waits_sixty_seconds_and_numbers_and_addresses_are_limited() -> None:
    core, _, sms, clock = make_core(sms_per_number_per_hour=3, sms_per_address_per_hour=4)
    await core.request_phone_code("CN", "13800138000", "s", 1)
    limited = await _code_error(core.request_phone_code("CN", "13800138000", "s", 2), Errcode.LIMIT_EXCEEDED)
    assert 59_000 < limited.retry_after_ms <= 60_000
    clock.advance(60)
    await core.request_phone_code("CN", "13800138000", "s", 2)
    clock.advance(60)
    await core.request_phone_code("CN", "13800138000", "s", 3)
    clock.advance(60)
    await _code_error(core.request_phone_code("CN", "13800138000", "s", 4), Errcode.LIMIT_EXCEEDED)
    assert len(sms.sent) == 3
    # Per client address: 4 per hour across numbers.
    for n in range(4):
        await core.request_phone_code("CN", f"1390013800{n}", "s", 1, client_address="10.1.1.1")
    await _code_error(
        core.request_phone_code("CN", "13900138009", "s", 1, client_address="10.1.1.1"), Errcode.LIMIT_EXCEEDED
    )


async def test_five_attempts_then_the_code_is_dead() -> None:
    core, _, sms, _ = make_core()
    session = await core.request_phone_code("CN", "13800138000", "s3cret", 1)
    code = sms.last_code(session.msisdn)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    messages = []
    for _ in range(5):
        messages.append(
            (
                await _code_error(core.submit_phone_code(session.sid, "s3cret", wrong), Errcode.THREEPID_AUTH_FAILED)
            ).message
        )
    assert "4 attempts left" in messages[0] and "no attempts left" in messages[-1]
    await _code_error(core.submit_phone_code(session.sid, "s3cret", code), Errcode.THREEPID_AUTH_FAILED)


async def test_codes_expire_after_five_minutes_and_need_the_client_secret() -> None:
    core, _, sms, clock = make_core()
    session = await core.request_phone_code("CN", "13800138000", "s3cret", 1)
    code = sms.last_code(session.msisdn)
    await _code_error(core.submit_phone_code(session.sid, "other-secret", code), Errcode.THREEPID_AUTH_FAILED)
    clock.advance(300)
    error = await _code_error(core.submit_phone_code(session.sid, "s3cret", code), Errcode.THREEPID_AUTH_FAILED)
    assert "expired" in error.message


async def test_bind_announces_phone_verified_and_one_number_one_account() -> None:
    core, store, sms, clock = make_core()
    await core.register("leo", PW)
    await core.register("mia", PW)
    await _code_error(core.bind_phone("@leo:laiwang.test", "nosuchsid", "s3cret"), Errcode.THREEPID_AUTH_FAILED)
    sid = await _verified(core, sms)
    assert await core.bind_phone("@leo:laiwang.test", sid, "s3cret") == "+8613800138000"
    verified = [e for e in store.events if isinstance(e, PhoneVerifiedEvent)]
    assert verified == [PhoneVerifiedEvent("@leo:laiwang.test", "+8613800138000", clock.now)]

    clock.advance(61)
    sid2 = await _verified(core, sms, secret="other")
    await _code_error(core.bind_phone("@mia:laiwang.test", sid2, "other"), Errcode.THREEPID_IN_USE)
    assert len([e for e in store.events if isinstance(e, PhoneVerifiedEvent)]) == 1

    login = await core.login_password(phone=("CN", "138 0013 8000"), password=PW)
    assert login.user_id == "@leo:laiwang.test"
    await core.unbind_phone("@leo:laiwang.test", "+8613800138000")
    assert isinstance(store.events[-1], PhoneUnboundEvent)
    await core.bind_phone("@mia:laiwang.test", sid2, "other")
    assert (await core.login_password(phone=("", "+8613800138000"), password=PW)).user_id == "@mia:laiwang.test"


async def test_an_unverified_session_cannot_be_bound() -> None:
    core, _, _, _ = make_core()
    await core.register("nina", PW)
    session = await core.request_phone_code("CN", "13800138000", "s3cret", 1)
    await _code_error(core.bind_phone("@nina:laiwang.test", session.sid, "s3cret"), Errcode.THREEPID_AUTH_FAILED)


# --- profiles and deactivation -----------------------------------------------------------------------------


async def test_profile_changes_are_validated_and_announced() -> None:
    core, store, _, _ = make_core()
    await core.register("olga", PW)
    await core.set_profile("@olga:laiwang.test", display_name="Olga", avatar_url=None)
    await core.set_profile("@olga:laiwang.test", display_name=None, avatar_url="mxc://laiwang.test/x")
    user = await core.get_profile("@olga:laiwang.test")
    assert (user.display_name, user.avatar_url) == ("Olga", "mxc://laiwang.test/x")
    assert store.events[-1] == ProfileChangedEvent("@olga:laiwang.test", "Olga", "mxc://laiwang.test/x")
    await _code_error(
        core.set_profile("@olga:laiwang.test", display_name="x" * 300, avatar_url=None), Errcode.INVALID_PARAM
    )
    await _code_error(core.get_profile("@ghost:laiwang.test"), Errcode.NOT_FOUND)


async def test_deactivation_revokes_unbinds_and_blocks() -> None:
    core, store, sms, _ = make_core()
    _, session = await core.register("pete", PW)
    sid = await _verified(core, sms)
    await core.bind_phone("@pete:laiwang.test", sid, "s3cret")
    await core.deactivate("@pete:laiwang.test", PW)
    assert not (await core.introspect(session.access_token)).active
    kinds = [type(e) for e in store.events]
    assert kinds[-3:] == [TokenRevokedEvent, PhoneUnboundEvent, AccountDeactivatedEvent]
    await _code_error(core.login_password(user="pete", password=PW), Errcode.FORBIDDEN)
    await _code_error(core.register("pete", PW), Errcode.USER_IN_USE)
    assert await core.store.threepid_owner("msisdn", "+8613800138000") is None


async def test_a_failed_unit_of_work_leaves_nothing_behind() -> None:
    core, store, sms, _ = make_core()
    await core.register("quin", PW)
    await core.register("rita", PW)
    sid = await _verified(core, sms)
    await core.bind_phone("@quin:laiwang.test", sid, "s3cret")
    events_before = list(store.events)
    await _code_error(core.unbind_phone("@rita:laiwang.test", "+8613800138000"), Errcode.THREEPID_NOT_FOUND)
    assert store.events == events_before
    assert await store.threepid_owner("msisdn", "+8613800138000") == "@quin:laiwang.test"
