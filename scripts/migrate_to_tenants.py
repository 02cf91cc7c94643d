"""Move data written before tenants existed to the tenant layout (batchsvc/pipeline/migrate.py).

    .venv/bin/python scripts/migrate_to_tenants.py [--tenant default]

Stop the workers first (`make down`); the API may keep running. Safe to run again."""

from __future__ import annotations

import argparse
import logging
import sys

from batchsvc.access import DEFAULT_TENANT, check_tenant
from batchsvc.pipeline.migrate import migrate_to_tenant_layout
from batchsvc.services import Services
from batchsvc.settings import get_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", default=DEFAULT_TENANT, help="the tenant that owns the old data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    done = migrate_to_tenant_layout(Services(get_settings()), check_tenant(args.tenant))
    print(f"{done.jobs} job(s), {done.files} file(s), {done.objects} object(s) moved to tenant {args.tenant!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
