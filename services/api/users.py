"""Sign-in and identity: ``/api/login``, ``/api/logout``, ``/api/me``, admin ``/api/users``.

A token's secret appears in the response that creates it and never again.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat
from pydantic.config import JsonDict

from flowyard.adapters.sql.user_store import SqlUserStore
from flowyard.core.errors import Unauthenticated
from flowyard.core.events import utcnow
from flowyard.core.identity import (
    MIN_PASSWORD_LENGTH,
    USER_NAME,
    Role,
    check_user_name,
)
from flowyard.services.api.auth import (
    SESSION_COOKIE,
    Admin,
    Caller,
    authenticator,
    client_address,
    principal,
)
from flowyard.services.api.errors import documented
from flowyard.services.api.user_schemas import MeOut, TokenCreated, TokenOut, UserOut
from flowyard.services.auth_service import Authenticator, csrf_token

public = APIRouter(prefix="/api", tags=["users"])
router = APIRouter(prefix="/api", tags=["users"], dependencies=[Depends(principal)])
Auth = Annotated[Authenticator, Depends(authenticator)]

# Documented for clients and fuzzers; check_user_name and check_password enforce them with
# their own messages (so the schema says only what the server would refuse anyway).
NAME_SCHEMA: JsonDict = {"pattern": f"^{USER_NAME.pattern}$"}
PASSWORD_SCHEMA: JsonDict = {"minLength": MIN_PASSWORD_LENGTH}
UserName = Annotated[str, Path(json_schema_extra=NAME_SCHEMA)]


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class CreateUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, json_schema_extra=NAME_SCHEMA)
    password: str = Field(min_length=1, max_length=1024, json_schema_extra=PASSWORD_SCHEMA)
    role: Role = Role.user


class UpdateUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    disabled: StrictBool | None = None
    role: Role | None = None
    password: str | None = Field(
        default=None, min_length=1, max_length=1024, json_schema_extra=PASSWORD_SCHEMA
    )


class CreateToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="api token", min_length=1, max_length=200)
    expires_days: StrictFloat | None = Field(default=None, gt=0, le=3650)


async def user_store(request: Request) -> SqlUserStore:
    """The whole user store (administration), not only what sign-in needs."""
    users: SqlUserStore = request.app.state.runtime.users
    return users


Users = Annotated[SqlUserStore, Depends(user_store)]


# -- sign-in (public: the credentials are the request) ----------------------


@public.post("/login", response_model=MeOut, responses=documented(401, 429))
async def login(
    request: Request,
    response: Response,
    auth: Auth,
    body: Annotated[Login | None, Body()] = None,
) -> MeOut:
    """Check a name and password and start a web session (an HttpOnly cookie)."""
    if body is None:
        raise Unauthenticated("send {'name': …, 'password': …} to sign in")
    if not auth.required:
        return MeOut(name=auth.local.name, role=auth.local.role, auth_required=False)
    user = await auth.password(body.name, body.password, client_address(request))
    secret = await auth.open_session(user)
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        max_age=int(auth.session_lifetime.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=auth.cookie_secure or request.url.scheme == "https",
        path="/",
    )
    return MeOut(name=user.name, role=user.role, auth_required=True, csrf_token=csrf_token(secret))


@router.post("/logout", status_code=204)
async def logout(request: Request, auth: Auth) -> Response:
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        await auth.close_session(session)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/me", response_model=MeOut)
async def me(request: Request, caller: Caller, auth: Auth) -> MeOut:
    session = request.cookies.get(SESSION_COOKIE)
    by_cookie = auth.required and session and "authorization" not in request.headers
    return MeOut(
        name=caller.name,
        role=caller.role,
        auth_required=auth.required,
        csrf_token=csrf_token(session) if by_cookie and session else None,
    )


@router.get("/me/tokens")
async def my_tokens(caller: Caller, users: Users) -> dict[str, list[TokenOut]]:
    return {"items": [TokenOut.of(t) for t in await users.tokens(caller.name)]}


# 404: with authentication off the caller is the local admin, who need not be a user row
@router.post("/me/tokens", status_code=201, response_model=TokenCreated, responses=documented(404))
async def create_my_token(body: CreateToken, caller: Caller, users: Users) -> TokenCreated:
    return await _create_token(users, caller.name, body)


@router.delete("/me/tokens/{token_id}", status_code=204)
async def revoke_my_token(token_id: str, caller: Caller, users: Users) -> Response:
    await users.revoke_token(token_id, user=caller.name)
    return Response(status_code=204)


# -- administration ----------------------------------------------------------


@router.get("/users")
async def list_users(_: Admin, users: Users) -> dict[str, list[UserOut]]:
    return {"items": [UserOut.of(u) for u in await users.list()]}


@router.post("/users", status_code=201, response_model=UserOut, responses=documented(409))
async def create_user(body: CreateUser, _: Admin, users: Users) -> UserOut:
    return UserOut.of(await users.create(body.name, body.password, body.role))


@router.get("/users/{name}", response_model=UserOut)
async def get_user(name: UserName, _: Admin, users: Users) -> UserOut:
    return UserOut.of(await users.get(check_user_name(name)))


@router.patch("/users/{name}", response_model=UserOut)
async def update_user(name: UserName, body: UpdateUser, _: Admin, users: Users) -> UserOut:
    check_user_name(name)
    if body.password is not None:
        await users.set_password(name, body.password)
    if body.role is not None:
        await users.set_role(name, body.role)
    if body.disabled is not None:
        await users.set_disabled(name, body.disabled)
    return UserOut.of(await users.get(name))


@router.delete("/users/{name}", status_code=204)
async def remove_user(name: UserName, _: Admin, users: Users) -> Response:
    await users.remove(check_user_name(name))
    return Response(status_code=204)


@router.get("/users/{name}/tokens")
async def user_tokens(name: UserName, _: Admin, users: Users) -> dict[str, list[TokenOut]]:
    await users.get(check_user_name(name))
    return {"items": [TokenOut.of(t) for t in await users.tokens(name)]}


@router.post("/users/{name}/tokens", status_code=201, response_model=TokenCreated)
async def create_user_token(
    name: UserName, body: CreateToken, _: Admin, users: Users
) -> TokenCreated:
    return await _create_token(users, check_user_name(name), body)


@router.delete("/users/{name}/tokens/{token_id}", status_code=204)
async def revoke_user_token(name: UserName, token_id: str, _: Admin, users: Users) -> Response:
    await users.revoke_token(token_id, user=check_user_name(name))
    return Response(status_code=204)


async def _create_token(users: SqlUserStore, user: str, body: CreateToken) -> TokenCreated:
    expires = None if body.expires_days is None else utcnow() + timedelta(days=body.expires_days)
    token, secret = await users.create_token(user, name=body.name, expires_at=expires)
    return TokenCreated(**TokenOut.of(token).model_dump(), token=secret)
