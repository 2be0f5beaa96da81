"""Two small SQL constructs that aggregate child rows into JSON on PostgreSQL, MariaDB and SQLite alike.

They let one statement return an image with its properties, tags and locations, instead of one
round trip per collection.
"""

from typing import Any

from sqlalchemy import JSON
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement


class json_rows(FunctionElement[Any]):  # noqa: N801  (an SQL function, named like one)
    """Aggregate: a JSON array holding one array per row, e.g. [[name, value], ...]; NULL or [] when empty."""

    type = JSON()
    inherit_cache = True


class json_document(FunctionElement[Any]):  # noqa: N801
    """A stored JSON column as a JSON value inside json_rows (SQLite keeps JSON as text)."""

    type = JSON()
    inherit_cache = True


@compiles(json_rows, "postgresql")
def _json_rows_postgresql(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_agg(json_build_array({compiler.process(element.clauses, **kw)}))"


@compiles(json_rows, "sqlite")
def _json_rows_sqlite(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_group_array(json_array({compiler.process(element.clauses, **kw)}))"


@compiles(json_rows, "mysql")
@compiles(json_rows, "mariadb")
def _json_rows_mariadb(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_arrayagg(json_array({compiler.process(element.clauses, **kw)}))"


@compiles(json_document, "postgresql")
def _json_document_postgresql(element: json_document, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(json_document, "sqlite")
def _json_document_sqlite(element: json_document, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json({compiler.process(element.clauses, **kw)})"


@compiles(json_document, "mysql")
@compiles(json_document, "mariadb")
def _json_document_mariadb(element: json_document, compiler: SQLCompiler, **kw: Any) -> str:
    # MariaDB's JSON column is text: extracted as '$' it is a JSON value that json_array embeds as is.
    return f"json_extract({compiler.process(element.clauses, **kw)}, '$')"
