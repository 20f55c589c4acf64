"""How pg_dump and psql are told where to connect: a libpq connection string without the password,
and the password in the environment, never on a command line where `ps` shows it."""

from collections.abc import Mapping

from .config import DatabaseConfig


def _conninfo_value(value: str) -> str:
    """Quote a libpq keyword value: single quotes, with backslash escapes, when it needs them."""
    if value and not any(character in value for character in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(database: DatabaseConfig, dbname: str | None = None) -> str:
    """Return the libpq connection string for the database (or another one on the same server)."""
    fields: dict[str, str] = {"dbname": dbname or database.name}
    if database.host:
        fields["host"] = database.host
    if database.port:
        fields["port"] = str(database.port)
    if database.user:
        fields["user"] = database.user
    fields.update(database.options)
    fields.setdefault("application_name", "tgbackupd")
    return " ".join(f"{keyword}={_conninfo_value(value)}" for keyword, value in fields.items())


def build_environment(database: DatabaseConfig, base: Mapping[str, str]) -> dict[str, str]:
    """Return a client's environment: the caller's own, with PGPASSWORD set to the configured one or unset."""
    environment = {name: value for name, value in base.items() if name != "PGPASSWORD"}
    if database.password:
        environment["PGPASSWORD"] = database.password
    return environment
