"""The metadata engines behind one connection interface: SQLite (the default) and PostgreSQL.

The code above this module writes one dialect: the SQL that SQLite >= 3.35
and PostgreSQL >= 15 both understand (``INSERT ... ON CONFLICT (...) DO
NOTHING / DO UPDATE``, ``RETURNING``, standard types, ``?`` parameters), and
talks to a `Database`: `execute` / `executemany` returning DB-API cursors
(tuples), `in_transaction`, and the transaction verbs `registry.db` builds
its `write_transaction` from. No ORM: the statements are few, hand-written
and indexed, and an ORM would hide exactly what the two engines must agree on.

What differs per engine stays here:

- parameters: ``?`` in the shared SQL becomes ``%s`` for psycopg (a literal
  ``%`` is doubled), ``LIKE`` becomes ``ILIKE``, because SQLite's LIKE
  ignores ASCII case and callers (Harbor's fuzzy ``q=`` searches) rely on
  it, and ``LIMIT ?`` takes -1 as "no limit" as SQLite does (`translate`);
- the write lock: SQLite's ``BEGIN IMMEDIATE`` takes the database's one
  write lock; on PostgreSQL a write transaction takes one transaction-level
  advisory lock (`WRITE_LOCK`) right after ``BEGIN``, so writers queue one
  after another exactly as they do on SQLite, across every process and
  machine that shares the database. Every read-check-then-write in the code
  was written for that guarantee; readers never take it;
- schema statements (`create_table`, `create_index`, `add_column`,
  `execute_ddl`): SQLite's through sqlite-utils' table API, so databases it
  created stay what they were; PostgreSQL's as BIGINT / DOUBLE PRECISION /
  TEXT / BYTEA, an integer ``id`` key as an identity column, and a
  ``rowid`` identity column on every other table (SQLite has an implicit
  one, which Harbor's artifact and tag ids are);
- which errors mean what (`Error`, `IntegrityError`, `is_disk_full`).

`Migrations` is the one migration list both engines apply (recorded in the
``_sqlite_migrations`` table, the name sqlite-utils gave it, so existing
SQLite databases carry on unchanged).
"""

from __future__ import annotations

import abc
import datetime
import errno
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
MIGRATIONS_TABLE = "_sqlite_migrations"
# The key of the PostgreSQL transaction-level advisory lock every write transaction takes (an arbitrary
# constant that spells "cargohold"); session-level locks for long work (GC, migrations) use `lock_key`.
WRITE_LOCK = 0x636172676F686F6C

try:  # psycopg is a dependency, but a SQLite-only install that lacks it must still run
    import psycopg
    import psycopg.errors
except ImportError:  # pragma: no cover
    psycopg = None  # type: ignore[assignment]

Error: tuple[type[Exception], ...] = (sqlite3.Error,) + ((psycopg.Error,) if psycopg is not None else ())
IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError,) + (
    (psycopg.errors.IntegrityError,) if psycopg is not None else ())


class Cursor(Protocol):
    """What `Database.execute` returns: a DB-API cursor whose rows are tuples."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


Columns = dict[str, type]


class Database(abc.ABC):
    """One connection to the metadata database, in autocommit mode; transactions are explicit."""

    engine: str

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        """Run one statement of the shared dialect; returns its cursor."""

    @abc.abstractmethod
    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        """Run one statement for each parameter tuple."""

    @property
    @abc.abstractmethod
    def in_transaction(self) -> bool: ...

    @abc.abstractmethod
    def begin_write(self) -> None:
        """Begin a transaction holding the database's write lock (waits for it)."""

    @abc.abstractmethod
    def begin_read(self) -> None:
        """Begin a read-only snapshot: every read until `rollback` sees the same committed state."""

    def commit(self) -> None:
        self.execute("COMMIT")

    @abc.abstractmethod
    def rollback(self) -> None: ...

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction inside the open one: rolled back alone if the block raises."""
        self._savepoints = getattr(self, "_savepoints", 0) + 1
        name = f"cargohold_sp{self._savepoints}"
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        else:
            self.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._savepoints -= 1

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def table_names(self) -> list[str]: ...

    @abc.abstractmethod
    def column_names(self, table: str) -> list[str]: ...

    # -- schema statements, for migrations ------------------------------------------------------------

    @abc.abstractmethod
    def create_table(self, name: str, columns: Columns, pk: str | tuple[str, ...],
                     not_null: Iterable[str] = (), foreign_keys: Iterable[tuple[str, str, str]] = ()) -> None:
        """CREATE TABLE with `columns` (Python types: int, str, float, bytes)."""

    @abc.abstractmethod
    def create_index(self, table: str, columns: Sequence[str], unique: bool = False) -> None: ...

    @abc.abstractmethod
    def add_column(self, table: str, column: str, kind: type, not_null_default: Any = None) -> None: ...

    def execute_ddl(self, *, sqlite: Sequence[str] = (), postgresql: Sequence[str] = ()) -> None:
        """Run the statements written for this engine (triggers, functions: where the dialects part)."""
        for statement in sqlite if self.engine == SQLITE else postgresql:
            self.execute(statement)


def placeholders(n: int) -> str:
    """``?, ?, ...`` for an ``IN (...)`` list of `n` values (callers keep `n` to a few thousand)."""
    return ", ".join("?" * n)


def insert_id(db: Database, sql: str, params: Sequence[Any]) -> int:
    """Run an INSERT into a table with an integer ``id`` key; returns the new row's id (``RETURNING id``).

    Every row is fetched: SQLite finishes a RETURNING statement only when its
    rows are read, and an unfinished one would keep its write lock.
    """
    rows = db.execute(f"{sql} RETURNING id", params).fetchall()
    return int(rows[0][0])


def _index_name(table: str, columns: Sequence[str]) -> str:
    return f"idx_{table}_{'_'.join(columns)}"  # sqlite-utils' naming, kept for both engines


class SQLiteDatabase(Database):
    """A sqlite3 connection (autocommit; WAL, FULL sync, foreign keys, busy timeout set by `registry.db`)."""

    engine = SQLITE

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._utils: Any = None

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def begin_write(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def begin_read(self) -> None:
        self.conn.execute("BEGIN")  # deferred: the snapshot starts at the first read (WAL)

    def rollback(self) -> None:
        self.conn.rollback()

    def close(self) -> None:
        self.conn.close()

    def table_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]

    def column_names(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute(f"PRAGMA table_info([{table}])")]

    def _tables(self) -> Any:
        if self._utils is None:
            from sqlite_utils import Database as UtilsDatabase

            self._utils = UtilsDatabase(self.conn)
        return self._utils

    def create_table(self, name: str, columns: Columns, pk: str | tuple[str, ...],
                     not_null: Iterable[str] = (), foreign_keys: Iterable[tuple[str, str, str]] = ()) -> None:
        self._tables().table(name).create(columns, pk=pk, not_null=set(not_null), foreign_keys=list(foreign_keys))

    def create_index(self, table: str, columns: Sequence[str], unique: bool = False) -> None:
        self._tables().table(table).create_index(list(columns), unique=unique)

    def add_column(self, table: str, column: str, kind: type, not_null_default: Any = None) -> None:
        self._tables().table(table).add_column(column, kind, not_null_default=not_null_default)


_PG_TYPES = {int: "BIGINT", str: "TEXT", float: "DOUBLE PRECISION", bytes: "BYTEA"}
_PLACEHOLDER = re.compile(r"""('(?:[^']|'')*')|("(?:[^"]|"")*")|(\bLIMIT\s+\?)|(\?)|(%)|\b(LIKE)\b""",
                          re.IGNORECASE)


def translate(sql: str) -> str:
    """The shared dialect as psycopg takes it (outside quotes).

    ``?`` -> ``%s``; ``%`` -> ``%%``; LIKE -> ILIKE; ``LIMIT ?`` takes a
    negative value as no limit, as SQLite does (PostgreSQL refuses it).
    """
    def sub(m: re.Match[str]) -> str:
        if m.group(1) is not None or m.group(2) is not None:
            return m.group(0).replace("%", "%%")
        if m.group(3) is not None:
            return "LIMIT NULLIF(GREATEST(%s::bigint, -1), -1)"
        if m.group(4) is not None:
            return "%s"
        if m.group(5) is not None:
            return "%%"
        return "ILIKE"
    return _PLACEHOLDER.sub(sub, sql)


_translated: dict[str, str] = {}


class PostgresDatabase(Database):
    """A psycopg 3 connection in autocommit mode; statements are translated once and cached."""

    engine = POSTGRESQL

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def _sql(self, sql: str) -> str:
        out = _translated.get(sql)
        if out is None:
            out = translate(sql)
            if len(_translated) < 4096:
                _translated[sql] = out
        return out

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        cursor: Cursor = self.conn.execute(self._sql(sql), list(params) if not isinstance(params, dict) else params)
        return cursor

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        rows = [list(p) for p in params]
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)

    @property
    def in_transaction(self) -> bool:
        return bool(self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)

    def begin_write(self) -> None:
        self.conn.execute("BEGIN")
        try:
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", [_signed(WRITE_LOCK)])
        except BaseException:
            self.rollback()
            raise

    def begin_read(self) -> None:
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()

    def table_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]

    def column_names(self, table: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s ORDER BY ordinal_position", [table])]

    def create_table(self, name: str, columns: Columns, pk: str | tuple[str, ...],
                     not_null: Iterable[str] = (), foreign_keys: Iterable[tuple[str, str, str]] = ()) -> None:
        keys = (pk,) if isinstance(pk, str) else pk
        required = set(not_null)
        parts = []
        for column, kind in columns.items():
            if keys == (column,) and kind is int:
                parts.append(f'"{column}" BIGINT GENERATED BY DEFAULT AS IDENTITY')
            else:
                parts.append(f'"{column}" {_PG_TYPES[kind]}' + (" NOT NULL" if column in required else ""))
        if not (len(keys) == 1 and columns.get(keys[0]) is int) and "rowid" not in columns:
            parts.append("rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE")
        parts.append("PRIMARY KEY (" + ", ".join(f'"{k}"' for k in keys) + ")")
        for column, other, other_column in foreign_keys:
            parts.append(f'FOREIGN KEY ("{column}") REFERENCES "{other}" ("{other_column}")')
        self.conn.execute(f'CREATE TABLE "{name}" (' + ", ".join(parts) + ")")

    def create_index(self, table: str, columns: Sequence[str], unique: bool = False) -> None:
        self.conn.execute(f'CREATE {"UNIQUE " if unique else ""}INDEX "{_index_name(table, columns)}" '
                          f'ON "{table}" (' + ", ".join(f'"{c}"' for c in columns) + ")")

    def add_column(self, table: str, column: str, kind: type, not_null_default: Any = None) -> None:
        extra = ""
        if not_null_default is not None:
            extra = " NOT NULL DEFAULT " + (f"'{not_null_default}'" if isinstance(not_null_default, str)
                                            else str(not_null_default))
        self.conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {_PG_TYPES[kind]}{extra}')

    def check_settings(self) -> None:
        """Refuse a database whose text ordering is not byte order (the C collation), naming the fix.

        Tag and catalog pages are in lexical order and continue after the
        last name seen (``name > ?``); SQLite compares bytes, and a locale
        collation would order (and page) differently.
        """
        row = self.conn.execute("SELECT datcollate FROM pg_database WHERE datname = current_database()").fetchone()
        if row is None or row[0] not in ("C", "POSIX"):
            raise RuntimeError(
                f"the PostgreSQL database's collation is {row[0] if row else 'unknown'!r}; cargohold needs "
                "byte order: create it with CREATE DATABASE ... TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C' "
                "ENCODING 'UTF8' (docs/operations.md, PostgreSQL metadata)")


def _signed(key: int) -> int:
    """A 64-bit key as PostgreSQL's signed bigint."""
    key &= (1 << 64) - 1
    return key - (1 << 64) if key >= 1 << 63 else key


def lock_key(name: str) -> int:
    """The advisory-lock key of a named cluster-wide lock (stable across processes and versions)."""
    import hashlib

    return _signed(int.from_bytes(hashlib.sha256(b"cargohold:" + name.encode()).digest()[:8], "big"))


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is the engine (or the OS under it) saying the disk or database is full.

    SQLite: ``database or disk is full`` (SQLITE_FULL, also when `PRAGMA
    max_page_count` is reached); PostgreSQL: SQLSTATE 53100 (disk_full) or
    53200 (out of memory is not it). Callers turn it into the same refusal as
    a full data volume rather than a server error.
    """
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF == sqlite3.SQLITE_FULL
        return "database or disk is full" in str(exc)
    if psycopg is not None and isinstance(exc, psycopg.Error):
        return getattr(exc, "sqlstate", None) == "53100"
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# -- migrations -----------------------------------------------------------------------------------------

MigrationFn = Callable[[Database], None]


@dataclass(frozen=True)
class Migration:
    name: str
    fn: MigrationFn


class Migrations:
    """A package's ordered migration set: ``@migrations()`` registers a function taking a `Database`."""

    migrations_table = MIGRATIONS_TABLE

    def __init__(self, name: str) -> None:
        self.name = name
        self._migrations: list[Migration] = []

    def __call__(self, *, name: str | None = None) -> Callable[[MigrationFn], MigrationFn]:
        def inner(fn: MigrationFn) -> MigrationFn:
            mname = name or fn.__name__
            if any(m.name == mname for m in self._migrations):
                raise ValueError(f"migration {mname!r} is registered twice in set {self.name!r}")
            self._migrations.append(Migration(mname, fn))
            return fn
        return inner

    def applied(self, db: Database) -> list[str]:
        if MIGRATIONS_TABLE not in db.table_names():
            return []
        return [r[0] for r in db.execute(f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ? ORDER BY id",
                                         [self.name])]

    def pending(self, db: Database) -> list[Migration]:
        done = set(self.applied(db))
        return [m for m in self._migrations if m.name not in done]

    def apply(self, db: Database) -> None:
        """Apply every pending migration, each in its own write transaction with its record."""
        ensure_migrations_table(db)
        for migration in self.pending(db):
            db.begin_write()
            try:
                migration.fn(db)
                db.execute(f"INSERT INTO {MIGRATIONS_TABLE} (migration_set, name, applied_at) VALUES (?, ?, ?)",
                           [self.name, migration.name, str(datetime.datetime.now(datetime.UTC))])
            except BaseException:
                db.rollback()
                raise
            db.commit()


def ensure_migrations_table(db: Database) -> None:
    """The record of applied migrations, as sqlite-utils made it (an older one is brought up to date)."""
    if isinstance(db, SQLiteDatabase):
        from sqlite_utils import Migrations as UtilsMigrations

        UtilsMigrations("cargohold").ensure_migrations_table(db._tables())
        return
    if MIGRATIONS_TABLE not in db.table_names():
        db.create_table(MIGRATIONS_TABLE, {"id": int, "migration_set": str, "name": str, "applied_at": str},
                        pk="id")
        db.create_index(MIGRATIONS_TABLE, ["migration_set", "name"], unique=True)
