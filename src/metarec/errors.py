"""Errors that the CLI turns into a clear message and a non-zero exit."""

from __future__ import annotations


class MetarecError(Exception):
    """Base class: a problem the user can act on (bad input, missing file, bad params)."""


class ParamsError(MetarecError):
    """params.yaml is missing a key, has an unknown key or a value of the wrong type."""


class DataError(MetarecError):
    """Input data is malformed. Names the file and, where known, the row and the column."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        self.file, self.row, self.column = file, row, column
        where = ", ".join(
            part for part in (
                f"file {file}" if file is not None else "",
                f"row {row}" if row is not None else "",
                f"column {column!r}" if column is not None else "",
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class IntegrityError(MetarecError):
    """A downloaded or tracked file does not match its expected checksum."""


class LockedError(MetarecError):
    """Another run of the same project holds the lock."""
