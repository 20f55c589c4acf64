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


# What pg_dump and psql may see of tgbackupd's environment: libpq's own PG* variables, finding programs,
# the language and time zone of their messages, HOME (~/.pgpass, ~/.postgresql/), and what libpq's
# Kerberos and OpenSSL read. Nothing else: the daemon's environment holds TELEGRAM_BOT_TOKEN and
# DATABASE_URL, which no client needs, and /proc/PID/environ of a client is one more place to guard.
_PASSED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "KRB5_CONFIG",
        "KRB5CCNAME",
        "KRB5_KTNAME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "OPENSSL_CONF",
    }
)
_PASSED_PREFIXES = ("PG", "LC_")


def client_environment(base: Mapping[str, str]) -> dict[str, str]:
    """Return what a PostgreSQL client program may see of `base`, without any password."""
    return {
        name: value
        for name, value in base.items()
        if (name in _PASSED_NAMES or name.startswith(_PASSED_PREFIXES)) and name != "PGPASSWORD"
    }


def build_environment(database: DatabaseConfig, base: Mapping[str, str]) -> dict[str, str]:
    """Return a client's environment: the allowed part of the caller's, with PGPASSWORD set to the
    configured password or unset."""
    environment = client_environment(base)
    if database.password:
        environment["PGPASSWORD"] = database.password
    return environment
