"""`gencast-rmmd quickstart` sub-commands (placeholder until the area's issue fills it in)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="quickstart (not built yet)")
    p.set_defaults(func=_not_built)


def _not_built(args) -> int:
    from gencast_rmmd.errors import UserError

    raise UserError("'quickstart' is not built yet in this version")
