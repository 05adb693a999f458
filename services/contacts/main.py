"""Composition root of the contacts service: builds its parts from the shared runtime and serves them.

Settings (besides the common ones in plumbing.config):
  CONTACTS_DEFAULT_REGION            region for numbers without a country code (default CN)
  CONTACTS_HASH_KEY                  secret for the keyed hashes address books are stored under;
                                     required when CONTACTS_REQUIRE_HASH_KEY=true (production)
  CONTACTS_REQUIRE_HASH_KEY          refuse to start on the development key (default false)
  CONTACTS_BUDGET_INITIAL            new numbers one verified phone number's accounts may upload (10000)
  CONTACTS_BUDGET_REFILL_PER_HOUR    how fast that budget refills (default 20)
  CONTACTS_ADDRESS_BUDGET_INITIAL    ceiling of new numbers from one client address (default 50000)
  CONTACTS_ADDRESS_BUDGET_REFILL_PER_HOUR  its refill (default 5000)
  AUTH_ADDR                          auth, asked for a user's verified phones before its event arrives
  CONTACTS_ASK_AUTH_FOR_PHONES       ask auth at all (default true; false: only auth's events count)
  CONTACTS_PEPPER_ROTATE_SECONDS     lookup pepper lifetime (default 7 days)
  CONTACTS_PEPPER_KEEP               pepper generations whose hash-only entries are kept (default 4)
  CONTACTS_INDEX_POLL_SECONDS        how often replicas pick up each other's index writes (0.25)
  CONTACTS_BOOK_INLINE_SECONDS       an upload answers after at most this long writing its entry rows;
                                     the rest are written in the background (3)
"""

from __future__ import annotations

import hashlib
import logging

from laiwang.contacts.v1 import contacts_pb2
from plumbing import streams
from plumbing.config import Env, default_address
from plumbing.domain_errors import DomainError
from plumbing.errors import ConfigError
from plumbing.grpc_client import open_channel
from plumbing.mongo import ensure_indexes
from plumbing.service import Runtime, ServiceParts, run_service
from services.contacts.api import ContactsApi
from services.contacts.clients import AuthPhones
from services.contacts.core import BudgetPolicy, Keyring, Normaliser, PhoneIndex
from services.contacts.events import AUTH_CONSUMER, PairEventProducer, auth_handler
from services.contacts.logic import ContactsLogic
from services.contacts.model import Settings
from services.contacts.store import ContactsStore

log = logging.getLogger(__name__)

DEV_HASH_KEY = "laiwang-dev-contacts-hash-key-not-for-production"


def hash_key(env: Env) -> bytes:
    raw = env.str("CONTACTS_HASH_KEY", DEV_HASH_KEY)
    if raw == DEV_HASH_KEY:
        if env.bool("CONTACTS_REQUIRE_HASH_KEY", False):
            raise ConfigError("CONTACTS_HASH_KEY is required (CONTACTS_REQUIRE_HASH_KEY=true): set a random secret")
        log.warning("CONTACTS_HASH_KEY is not set: using the development key (never do this in production)")
    if len(raw) < 16:
        raise ConfigError("CONTACTS_HASH_KEY must be at least 16 characters")
    # Changing the key orphans every stored address book, so it is derived once, deterministically.
    return hashlib.sha256(b"laiwang-contacts-book-key:" + raw.encode()).digest()


def build_logic(runtime: Runtime, env: Env | None = None) -> tuple[ContactsLogic, ContactsStore]:
    env = env or Env()
    normaliser = Normaliser(env.str("CONTACTS_DEFAULT_REGION", "CN"))
    try:
        normaliser.region("")
    except DomainError:
        raise ConfigError(f"CONTACTS_DEFAULT_REGION={normaliser.default_region!r} is not a known region") from None
    settings = Settings(
        budget=BudgetPolicy(
            initial=env.int("CONTACTS_BUDGET_INITIAL", 10_000, minimum=1),
            refill_per_hour=env.float("CONTACTS_BUDGET_REFILL_PER_HOUR", 20.0),
        ),
        pepper_rotate_seconds=env.float("CONTACTS_PEPPER_ROTATE_SECONDS", 7 * 24 * 3600.0, minimum=1.0),
        pepper_keep=env.int("CONTACTS_PEPPER_KEEP", 4, minimum=1, maximum=100),
        poll_seconds=env.float("CONTACTS_INDEX_POLL_SECONDS", 0.25, minimum=0.01),
        book_inline_seconds=env.float("CONTACTS_BOOK_INLINE_SECONDS", 3.0, minimum=0.0),
        address_budget=BudgetPolicy(
            initial=env.int("CONTACTS_ADDRESS_BUDGET_INITIAL", 50_000, minimum=1),
            refill_per_hour=env.float("CONTACTS_ADDRESS_BUDGET_REFILL_PER_HOUR", 5_000.0),
        ),
    )
    store = ContactsStore(runtime.mongo, runtime.db)
    producer = PairEventProducer(runtime.outbox)
    ask_auth = env.bool("CONTACTS_ASK_AUTH_FOR_PHONES", True)
    phones = AuthPhones(open_channel(env.address("AUTH_ADDR", default_address("auth")))) if ask_auth else None
    logic = ContactsLogic(
        store,
        PhoneIndex(),
        Keyring(hash_key(env)),
        normaliser,
        settings,
        producer.stage,
        producer.kick,
        verified_phones=phones,
    )
    return logic, store


async def build(runtime: Runtime) -> ServiceParts:
    logic, store = build_logic(runtime)
    # Indexes first (run_service declares them again, harmlessly): loading a large index is faster with them.
    await ensure_indexes(runtime.db, store.indexes())
    await logic.load()
    api = ContactsApi(logic)
    return ServiceParts(
        service_names=[contacts_pb2.DESCRIPTOR.services_by_name["ContactsService"].full_name],
        registrations=[api.register],
        indexes=store.indexes(),
        produces=[streams.CONTACTS],
        consumers=[(AUTH_CONSUMER, auth_handler(logic))],
        background=[logic.run_refresh],
    )


def main() -> None:
    run_service("contacts", build)
