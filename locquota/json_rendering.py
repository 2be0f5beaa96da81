"""Response bodies as JSON, with orjson.

A page of images is mostly JSON work on both sides of the view: each row brings its properties, tags
and locations as JSON aggregates (decoded with orjson too: locquota.db.make_engine's json_deserializer),
and the page goes out as one JSON document. orjson does both several times faster than the standard
library (issue 18: reads near the floor).

It stays about as strict as the standard renderer: datetimes and dataclasses are not serialized by
orjson's own rules but go through Pyramid's adapters like any other object, so such a value no view
meant to send fails loudly instead of going out in a format nobody chose. (orjson does write UUIDs and
enums as their text, which the standard library would refuse; the presenters hand over text already.)
"""

from collections.abc import Callable

import orjson
from pyramid.config import Configurator
from pyramid.renderers import JSON

# Integer keys become strings, as json.dumps makes them; datetimes and dataclasses take Pyramid's adapters.
DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(value: object, default: Callable[[object], object] | None = None) -> bytes:
    """The renderer's serializer: UTF-8 JSON bytes (Pyramid sets them as the body as they are)."""
    return orjson.dumps(value, default=default, option=DUMP_OPTIONS)


def includeme(config: Configurator) -> None:
    """The "json" renderer every view and error view names, with orjson underneath."""
    config.add_renderer("json", JSON(serializer=dumps))
