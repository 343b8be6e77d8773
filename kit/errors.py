"""One error type for bad input: the CLI prints its message on one line and exits with 2."""


class KitError(Exception):
    """A user-facing error. The message names the file, row and field, and what to do."""

    def __init__(self, message: str, *, path: object = None, row: int | None = None,
                 field: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        self.path, self.row, self.field = path, row, field
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
