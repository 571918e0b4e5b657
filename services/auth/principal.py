"""The caller of a request, as the rest of the services see it.

Built by the edge (a verified token, or the anonymous caller when authentication is off)
and handed to the services; they never see a token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    TRANSCRIBER = "transcriber"
    BULK = "bulk"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    owner: str | None
    """Who owns what this caller creates: `<issuer>#<sub>`, so two realms never collide.
    None only for the anonymous caller (authentication off)."""
    roles: frozenset[Role] = field(default_factory=frozenset)
    client_id: str | None = None

    def has(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    @property
    def visible_owner(self) -> str | None:
        """Whose jobs this caller sees: None means everyone's (admin only, including jobs
        from before authentication, owner null), else only its own."""
        if self.is_admin:
            return None
        if self.owner is None:
            raise ValueError("a caller without an identity sees no jobs")
        return self.owner

    @property
    def limit_key(self) -> str:
        """The key rate limits and quotas are counted under."""
        return self.owner or "anonymous"


ANONYMOUS = Principal(owner=None, roles=frozenset(Role))
"""The caller when authentication is off (dev only): every role, owns nothing."""
