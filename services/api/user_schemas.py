"""The JSON shapes of users, sign-in and API tokens (``/api/me``, ``/api/users``).

Apart from the routes in ``services/api/users.py`` so that the client
(``services/client``) reads them without loading FastAPI or the database.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from flowyard.core.identity import ApiToken, Role, User


class UserOut(BaseModel):
    name: str
    role: Role
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            name=user.name,
            role=user.role,
            disabled=user.disabled,
            created_at=user.created_at,
            last_login_at=user.last_login_at,
        )


class MeOut(BaseModel):
    name: str
    role: Role
    auth_required: bool
    csrf_token: str | None = Field(
        default=None, description="send as X-CSRF-Token with changes when signed in by cookie"
    )


class TokenOut(BaseModel):
    id: str
    user: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, token: ApiToken) -> TokenOut:
        return cls(
            id=token.id,
            user=token.user,
            name=token.name,
            created_at=token.created_at,
            expires_at=token.expires_at,
            last_used_at=token.last_used_at,
            revoked_at=token.revoked_at,
        )


class TokenCreated(TokenOut):
    token: str = Field(description="shown only in this response")
