"""Who may do what: tenant names and roles. The one source of both rules, read by
the key store, the API's schemas and the CLI."""

from __future__ import annotations

import re
from enum import StrEnum

from batchsvc.errors import ErrorType, ServiceError

DEFAULT_TENANT = "default"  # the tenant of the bootstrap key, and of records written before tenants
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TENANT_RULE = "lower-case letters, digits, '-' and '_', at most 63, starting alphanumeric"
_TENANT = re.compile(TENANT_PATTERN)


class Role(StrEnum):
    """Each role can do what the ones before it can."""

    VIEWER = "viewer"  # reads its tenant's jobs, files and results
    SUBMITTER = "submitter"  # also submits, cancels and retries
    ADMIN = "admin"  # also manages keys and tenants, and sees every tenant

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


ROLE_NAMES = tuple(role.value for role in Role)


def check_tenant(name: str) -> str:
    if not _TENANT.match(name):
        raise ServiceError(
            ErrorType.VALIDATION,
            f"tenant {name!r} is not a valid tenant name",
            {"fields": {"tenant": [TENANT_RULE]}},
        )
    return name
