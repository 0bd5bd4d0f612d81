"""gencast-rmmd: distil GenCast into a few-step student with Rewarded Moment Matching Distillation."""

__version__ = "0.1.0"

import os as _os

# gcsfs (>= 2025.x) first asks Google's storage-control API what layout a bucket has (for zonal
# and hierarchical-namespace buckets), which anonymous reads of public buckets such as
# ARCO-ERA5 may not use: each bucket then costs a warning, or up to 60 s where the network is
# down. Plain object reads and writes, all this tool does, need none of it. Set the variable
# yourself to keep gcsfs's default.
_os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
