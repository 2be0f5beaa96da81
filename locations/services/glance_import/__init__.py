"""`locquota import-glance`: images, locations and members from a Glance database (SQLite, PostgreSQL, MySQL).

One job per module, imported one way: report <- source (reads Glance) <- memberships (maps an image's members)
<- planner (maps an image) <- writer (writes a batch) <- importer (runs the batches, then settles usage).
docs/import.md is the operator's guide, with every decision explained.
"""

from locations.services.glance_import.importer import GlanceImporter, TargetNotReadyError
from locations.services.glance_import.planner import PlannedImage, Planner
from locations.services.glance_import.report import Finding, Tally, describe_error, has_credentials, mask_url
from locations.services.glance_import.source import GlanceImage, GlanceLocation, GlanceSource, GlanceSourceError

__all__ = [
    "Finding",
    "GlanceImage",
    "GlanceImporter",
    "GlanceLocation",
    "GlanceSource",
    "GlanceSourceError",
    "PlannedImage",
    "Planner",
    "Tally",
    "TargetNotReadyError",
    "describe_error",
    "has_credentials",
    "mask_url",
]
