"""nats-server's authorization for flowyard, rendered from the users table (pure, no I/O).

``flowyard nats auth-config`` feeds ``render_auth_config`` the accounts of
``SqlUserStore.nats_accounts()`` (enabled users and their usable API tokens,
each with a bcrypt hash that nats-server verifies itself) and prints one
``accounts { FLOWYARD { … } }`` block: the flowyard server unrestricted, an
admin's logins with every owner's work, a user's logins with their owner's
work, events, heartbeats, presence and bucket only. NATS, not flowyard, then
enforces who may take what; a change takes effect at ``nats-server --signal
reload``.

Every login may publish one whoami subject, its own
(``flowyard.rpc.whoami.<nats user>``): the subject alone tells the server who
asks, because nobody else may publish on it, and the server answers with the
login's owner and role (``WhoAmIReply``), so a worker needs no ``--owner``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from nats.js.api import DEFAULT_PREFIX as JS_API
from nats.js.object_store import (
    OBJ_ALL_CHUNKS_PRE_TEMPLATE,
    OBJ_ALL_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
)
from pydantic import BaseModel

from flowyard.bus.nats.streams import work_stream
from flowyard.bus.nats.subjects import (
    PREFIX,
    WORKER_EVENT_KINDS,
    cancel_subject,
    event_subject,
    lease_subject,
    name_token,
    token,
    wake_subject,
    worker_event_filters,
    workers_subject,
)
from flowyard.core.errors import ConfigError
from flowyard.core.identity import USER_NAME, Role

ACCOUNT = "FLOWYARD"
DEFAULT_SERVER_USER = "flowyard-server"
JS_ACK = "$JS.ACK"
JS_FLOW_CONTROL = "$JS.FC"
INBOX = "_INBOX"
BCRYPT = re.compile(r"\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}")
"""What nats-server takes as a bcrypt hash in place of a password (and nothing plainer)."""

BucketName = Callable[[str], str]
"""An owner's object-store bucket (``bus.nats.object_store.bucket_name``)."""


class NatsLogin(Protocol):
    """One user of nats-server: a flowyard user, or one of their API tokens."""

    @property
    def nats_user(self) -> str: ...

    @property
    def owner(self) -> str: ...

    @property
    def role(self) -> Role: ...

    @property
    def password_hash(self) -> str: ...


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


class WhoAmIReply(BaseModel):
    """The server's answer on a login's whoami subject: whose tasks its worker may take.

    ``owner`` is None for an admin (every owner's). ``error`` is set when the
    login is no (longer a) usable flowyard user or token; ``retry`` when the
    server could not read its users just now.
    """

    owner: str | None = None
    role: Role | None = None
    error: str = ""
    retry: bool = False


# ----------------------------------------------------------------------------- names


def whoami_subject(nats_user: str) -> str:
    """Request-reply, to the server: the only subject of this namespace a login may publish."""
    return f"{PREFIX}.rpc.whoami.{token(nats_user)}"


def inbox_prefix(name: str | None) -> str:
    """An inbox prefix: an owner's (None: an admin's worker, plain ``_INBOX``) or a login's.

    A user's worker gets its replies on ``_INBOX_<owner>``, and its NATS user may
    subscribe there only, so it cannot read other clients' replies. Before it
    knows its owner, a worker asks on ``_INBOX_<its NATS user>`` (the same for a
    password login, ``_INBOX_fyt_<token id>`` for a token).
    """
    return INBOX if name is None else f"{INBOX}_{name_token(name)}"


def _inboxes(*names: str | None) -> list[str]:
    return [f"{prefix}.>" for prefix in dict.fromkeys(inbox_prefix(n) for n in names)]


_ANY = "%any%"
"""A stand-in owner or flow: ``token`` keeps it, and ``_wild`` widens the subject from it."""


def _wild(subject: str) -> str:
    """A helper-built subject, from its first ``_ANY`` token on matching anything (``>``)."""
    tokens = subject.split(".")
    return ".".join([*tokens[: tokens.index(_ANY)], ">"])


WHOAMI_SUBJECTS = whoami_subject(_ANY).replace(_ANY, "*")
"""What the server answers (one token per login: ``*``, not ``>``)."""


def whoami_login(subject: str) -> str | None:
    """The (subject token of the) NATS user that published on a whoami subject."""
    head, _, login = subject.rpartition(".")
    return login if f"{head}.*" == WHOAMI_SUBJECTS and login else None


def _bucket_permissions(bucket: str) -> list[str]:
    """What nats-py's object store publishes to read, write and delete in one bucket."""
    stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
    return [
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.DELETE.{stream}.>",
        f"{JS_API}.STREAM.PURGE.{stream}",
        OBJ_ALL_CHUNKS_PRE_TEMPLATE.format(bucket=bucket),
        OBJ_ALL_META_PRE_TEMPLATE.format(bucket=bucket),
        f"{JS_FLOW_CONTROL}.{stream}.>",
    ]


# ----------------------------------------------------------------------- permissions


def admin_permissions(nats_user: str) -> Permissions:
    """An admin's worker: every owner's work, events, heartbeats and buckets."""
    publish = [
        *worker_event_filters(),
        _wild(lease_subject(_ANY, _ANY)),
        _wild(workers_subject(_ANY)),
        f"{JS_API}.INFO",
        f"{JS_API}.STREAM.INFO.*",
        f"{JS_API}.STREAM.LIST",
        f"{JS_API}.STREAM.NAMES",
        f"{JS_API}.CONSUMER.INFO.*.*",
        f"{JS_API}.CONSUMER.MSG.NEXT.*.*",
        f"{JS_ACK}.>",
        f"{JS_API}.STREAM.MSG.GET.*",
        f"{JS_API}.DIRECT.GET.>",
        f"{JS_API}.CONSUMER.CREATE.>",
        f"{JS_API}.CONSUMER.DELETE.>",
        f"{JS_API}.STREAM.PURGE.*",
        "$O.>",
        f"{JS_FLOW_CONTROL}.>",
        whoami_subject(nats_user),
    ]
    subscribe = [
        *_inboxes(None, nats_user),
        _wild(cancel_subject(_ANY, _ANY)),
        _wild(wake_subject(_ANY, _ANY)),
    ]
    return Permissions(tuple(publish), tuple(subscribe))


def user_permissions(nats_user: str, owner: str, bucket_name: BucketName) -> Permissions:
    """A user's worker: its owner's work, events, heartbeats, presence and bucket only.

    Permissions match whole subject tokens, and the owner is one token of every
    subject and stream name here (``FLOWYARD_WORK_<owner>``,
    ``OBJ_flowyard_files_<owner>``), so these grant exactly that owner's share.
    ``$JS.API.STREAM.NAMES`` (how nats-py finds a bucket's stream) reveals
    stream names, not contents.
    """
    stream = work_stream(owner)
    publish = [
        *(_wild(event_subject(f"task.{kind}", owner, _ANY)) for kind in WORKER_EVENT_KINDS),
        _wild(lease_subject(owner, _ANY)),
        workers_subject(owner),
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_ACK}.{stream}.>",
        f"{JS_API}.STREAM.NAMES",
        *_bucket_permissions(bucket_name(owner)),
        whoami_subject(nats_user),
    ]
    subscribe = [
        *_inboxes(owner, nats_user),
        _wild(cancel_subject(owner, _ANY)),
        _wild(wake_subject(token(owner), _ANY)),
    ]
    return Permissions(tuple(publish), tuple(subscribe))


# ---------------------------------------------------------------------------- render


def quote(value: str) -> str:
    """A double-quoted nats-server config string (``$`` stays literal inside quotes)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigError(f"{value[:40]!r}: control characters cannot go into a NATS config")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_name(name: str, what: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise ConfigError(
            f"{what} {name[:80]!r} cannot be a NATS user here "
            "(letters, digits, '_' and '-' only, up to 64)"
        )
    return name


def _check_hash(password_hash: str, who: str) -> str:
    if not BCRYPT.fullmatch(password_hash):
        raise ConfigError(f"the NATS password of {who!r} is not a bcrypt hash; not writing it")
    return password_hash


def _login_order(login: NatsLogin) -> tuple[str, bool, str]:
    """A user's own login first, then their tokens by id: the same file for the same table."""
    return (login.owner, login.nats_user != login.owner, login.nats_user)


def _list(key: str, items: Sequence[str], indent: str) -> list[str]:
    return [
        f"{indent}{key}: {{ allow: [",
        *(f"{indent}  {quote(item)}" for item in items),
        f"{indent}] }}",
    ]


def _user_block(
    name: str, password_hash: str, permissions: Permissions | None, comment: str
) -> list[str]:
    lines = [
        f"      # {comment}",
        "      {",
        f"        user: {quote(name)}",
        f"        password: {quote(password_hash)}",
    ]
    if permissions is not None:
        lines += [
            "        permissions: {",
            *_list("publish", permissions.publish, "          "),
            *_list("subscribe", permissions.subscribe, "          "),
            "        }",
        ]
    lines.append("      }")
    return lines


def render_auth_config(
    logins: Iterable[NatsLogin],
    *,
    server_user: str,
    server_password_hash: str,
    bucket_name: BucketName,
) -> str:
    """The ``accounts { FLOWYARD { … } }`` block for ``include`` in nats-server.conf.

    Deterministic: logins are ordered by owner (the user's own login before
    their tokens), so an unchanged table renders an unchanged file (the
    server's bcrypt salt aside). Names must be flowyard user names (or
    ``fyt_<token id>``) and passwords bcrypt hashes; anything else is refused
    rather than written into an auth file.
    """
    _check_name(server_user, "the server's NATS user")
    _check_hash(server_password_hash, server_user)
    ordered = sorted(logins, key=_login_order)
    seen = {server_user}
    body: list[str] = []
    for login in ordered:
        name = _check_name(login.nats_user, "NATS user")
        owner = _check_name(login.owner, "owner")
        if name in seen:
            raise ConfigError(
                f"NATS user {name!r} appears twice (is it also the server's --nats-user?)"
            )
        seen.add(name)
        role = Role(login.role)
        kind = "" if name == owner else f"token {name} of "
        if role is Role.admin:
            permissions = admin_permissions(name)
            comment = f"{kind}{owner} (admin): every owner's work"
        else:
            permissions = user_permissions(name, owner, bucket_name)
            comment = f"{kind}{owner} (user): {owner}'s work, events and objects only"
        body += _user_block(name, _check_hash(login.password_hash, name), permissions, comment)
    lines = [
        "# nats-server authorization for flowyard: generated by `flowyard nats auth-config`",
        "# from the users table. Do not edit: regenerate after `flowyard users ...` changes",
        "# and run `nats-server --signal reload`. Include it from nats-server.conf",
        "# (run nats-server with -js, or add a jetstream {} block there).",
        "accounts {",
        f"  {ACCOUNT} {{",
        "    jetstream: enabled",
        "    users: [",
        *_user_block(
            server_user,
            server_password_hash,
            None,
            "the flowyard server: streams, consumers, relay, every owner's bucket",
        ),
        *body,
        "    ]",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"
