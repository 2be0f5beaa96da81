"""Which database errors say "this column cannot hold this value" (a 400 where the request chose the value)."""

import pymysql
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from locquota.db import refused_column

REFUSED = "Incorrect uuid value: '00000000-0000-d8ec-0100-000000000000' for column `locquota`.`images`.`id` at row 1"


def mysql_error(code: int, message: str) -> OperationalError:
    return OperationalError("INSERT INTO images ...", {}, pymysql.err.OperationalError(code, message))


def test_mariadbs_refusal_names_the_table_and_column():
    assert refused_column(mysql_error(1292, REFUSED)) == "images.id"


@pytest.mark.parametrize(
    "error",
    [
        mysql_error(1213, "Deadlock found when trying to get lock; try restarting transaction"),
        mysql_error(2003, "Can't connect to MySQL server on '127.0.0.1'"),
        mysql_error(1292, "Truncated incorrect DOUBLE value: 'x'"),  # no column named: not a stored value
        IntegrityError("INSERT", {}, pymysql.err.IntegrityError(1062, "Duplicate entry 'x' for key 'PRIMARY'")),
        ValueError("not a database error"),
    ],
)
def test_other_errors_name_no_column(error):
    assert refused_column(error) is None
