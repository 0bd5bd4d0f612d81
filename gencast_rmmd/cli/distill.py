"""`gencast-rmmd distill` sub-commands (placeholder until the area's issue fills it in)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("distill", help="distill (not built yet)")
    p.set_defaults(func=_not_built)


def _not_built(args) -> int:
    from gencast_rmmd.errors import UserError

    raise UserError("'distill' is not built yet in this version")
