"""The endpoint's boundary: who may call it and how much they may send, checked before any
work. The Host header (a guard against DNS rebinding, where a web page reaches a loopback
service through a name its attacker controls), the body size (by Content-Length, or as the
bytes arrive), and bearer tokens: an admin token acting for any user, per-user tokens scoping
a client to its own user id. With no token configured every caller acts as admin, which
`ServeConfig` allows only on a loopback host (or when told a gateway in front authenticates).

The settings live in this module, set by the replica's constructor (`configure`): Serve serves
a frozen copy of the FastAPI app, so its `app.state` is out of the constructor's reach, while
this module is imported once per replica process, by the middleware and the constructor alike.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Header, HTTPException
from fastapi.responses import JSONResponse


@dataclass(frozen=True)
class Caller:
    admin: bool
    user_id: str | None = None  # the one user a per-user token acts for

    def check_may_act_for(self, user_id: str) -> None:
        if not self.admin and user_id != self.user_id:
            raise HTTPException(403, f"this token may not act for user {user_id!r}")


@dataclass
class Access:
    admin_token: str = ""
    user_tokens: dict[str, str] = field(default_factory=dict)  # user id → token
    allowed_hosts: frozenset[str] = frozenset({"*"})
    max_body_bytes: int = 1_000_000

    def caller(self, authorization: str | None) -> Caller:
        """The caller a request's Authorization header makes; 401 if it makes none."""
        if not self.admin_token and not self.user_tokens:
            return Caller(admin=True)
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and given:
            # Constant-time comparisons of bytes (headers arrive as latin-1 text; str
            # comparison refuses non-ASCII): no timing tells how much of a token matched.
            token = given.encode("latin-1")
            if self.admin_token and hmac.compare_digest(token, self.admin_token.encode()):
                return Caller(admin=True)
            for user_id, user_token in self.user_tokens.items():
                if hmac.compare_digest(token, user_token.encode()):
                    return Caller(admin=False, user_id=user_id)
        raise HTTPException(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )

    def host_allowed(self, host_header: bytes | None) -> bool:
        if "*" in self.allowed_hosts:
            return True
        host = (host_header or b"").decode("latin-1").lower()
        # "name:port", "[v6]:port" or bare: the name without the port.
        name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        return name in self.allowed_hosts


_settings = Access()  # this replica's, from `configure`


def configure(access: Access) -> None:
    global _settings
    _settings = access


def caller(authorization: Annotated[str | None, Header()] = None) -> Caller:
    """FastAPI dependency: the caller the request's bearer token makes."""
    return _settings.caller(authorization)


class BodyTooLarge(HTTPException):
    """Raised while the body arrives; an HTTPException, so FastAPI answers it as it is."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes (max_body_bytes)")


class Boundary:
    """ASGI middleware: a foreign Host is a 400, a body over `max_body_bytes` a 413, before
    the app reads anything."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = _settings
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        refusal = None
        if not access.host_allowed(headers.get(b"host")):
            refusal = 400, "Host not allowed"
        elif declared is not None and (
            not declared.isdigit() or int(declared) > access.max_body_bytes
        ):
            refusal = 413, BodyTooLarge(access.max_body_bytes).detail
        if refusal is not None:
            reply = JSONResponse(status_code=refusal[0], content={"detail": refusal[1]})
            await reply(scope, receive, send)
            return
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > access.max_body_bytes:
                raise BodyTooLarge(access.max_body_bytes)
            return message

        await self.app(scope, bounded, send)
