"""The launchers are safe on a shared machine: while a test or the demo runs, another local user
can neither log in to its PostgreSQL nor read a broker's passwords, and Mosquitto is not root."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest

from gateway.services.amqtt import Amqtt
from gateway.services.kafka import Kafka
from gateway.services.mosquitto import Mosquitto
from gateway.services.postgres import Postgres

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


async def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run argv as the OS user `nobody`, with no group of ours.

    Becoming another user needs root: run as anyone else, the tests that try what another local
    user can do fail here, saying so, rather than pass unproven or skip."""
    assert os.geteuid() == 0, "these tests act as another OS user, which needs root (CI is root)"
    return await asyncio.to_thread(
        subprocess.run, [*AS_NOBODY, *argv], capture_output=True, text=True, check=False
    )


def uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(uid) for uid in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def shared(paths: list[Path]) -> list[str]:
    """Paths with any group or other permission bit; sockets are guarded by their directory."""
    return [
        f"{path} {stat.filemode(mode)}"
        for path in paths
        if not stat.S_ISSOCK(mode := path.lstat().st_mode) and mode & 0o077
    ]


def tree(directory: Path) -> list[Path]:
    return [directory, *directory.rglob("*")]


def pg_hba_rules(data_dir: Path) -> list[list[str]]:
    lines = (data_dir / "pg_hba.conf").read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]


async def test_postgres_keeps_its_directory_and_socket_to_itself() -> None:
    async with Postgres() as postgres:
        assert postgres._process is not None
        server_uid = uids(postgres._process.process.pid)[0]
        assert shared(tree(postgres.directory)) == []
        for directory in (postgres.directory, postgres.data_dir):
            assert directory.stat().st_uid == server_uid
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        if os.geteuid() == 0:
            assert server_uid != 0
        rules = pg_hba_rules(postgres.data_dir)
        assert rules and all("trust" not in rule for rule in rules)
        assert {rule[-1] for rule in rules if rule[0] == "local"} == {"scram-sha-256"}
        # Over the socket, as we are and without the password: refused.
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(
                host=str(postgres.directory),
                port=postgres.port,
                user=postgres.address.superuser,
                password="",
            )
        # The launcher's own way in, with the password over TCP, still works.
        conn = await asyncpg.connect(postgres.dsn)
        assert await conn.fetchval("SELECT current_setting('is_superuser')") == "on"
        await conn.close()


async def test_another_os_user_cannot_log_in_over_the_socket() -> None:
    async with Postgres() as postgres:
        psql = [str(postgres._bin / "psql"), "-w", "-p", str(postgres.port)]
        login = ["-U", postgres.address.superuser, "-c", "SELECT 1"]
        refused = await as_nobody(*psql, "-h", str(postgres.directory), *login)
        assert refused.returncode != 0
        assert "Permission denied" in refused.stderr, refused.stderr
        # The same binary as the same user reaches the server over TCP, where the password is
        # asked for: the refusal above is the socket's directory, not a broken psql.
        asked = await as_nobody(*psql, "-h", "127.0.0.1", *login)
        assert asked.returncode != 0
        assert "password" in asked.stderr, asked.stderr


async def test_mosquitto_runs_unprivileged_with_private_files() -> None:
    async with Mosquitto(tls=True) as broker:
        assert broker._process is not None
        running_as = uids(broker._process.process.pid)
        if os.geteuid() == 0:
            assert running_as == [pwd.getpwnam("mosquitto").pw_uid] * 4
        else:
            assert running_as == [os.geteuid()] * 4
        broker.add_user("sensor-perm-1")  # the plugin saves its file as the broker's user
        files = tree(broker.directory)
        for secret in (
            broker.config_file,
            broker.dynsec_file,
            broker.admin_password_file,
            broker.gateway_password_file,
            broker.directory / "tls" / "server.key",
        ):
            assert secret in files
        assert stat.S_IMODE(broker.directory.stat().st_mode) == 0o700
        assert shared(files) == []
        assert {path.stat().st_uid for path in files} == {running_as[0]}
        # Stopped, accounts are written by us into its file; started again, it reads them.
        await broker.stop()
        broker.add_user("sensor-perm-2")
        await broker.start()
        assert broker._process is not None
        assert uids(broker._process.process.pid)[0] == running_as[0]
        assert shared(tree(broker.directory)) == []


async def test_another_os_user_cannot_read_the_broker_files() -> None:
    async with Mosquitto() as broker:
        read = await as_nobody("cat", str(broker.admin_password_file))
        assert read.returncode != 0 and "Permission denied" in read.stderr


async def test_kafka_directory_and_config_are_private() -> None:
    async with Kafka(tls=True) as kafka:
        launcher_files = [
            path
            for path in tree(kafka.directory)
            if path.suffix in {".properties", ".pem", ".key", ".crt"}
        ]
        assert kafka.directory / "server.properties" in launcher_files
        assert stat.S_IMODE(kafka.directory.stat().st_mode) == 0o700
        assert shared([kafka.directory, *launcher_files]) == []


async def test_amqtt_directory_and_passwords_are_private() -> None:
    async with Amqtt() as broker:
        broker.add_user("sensor-perm-3")
        assert broker.password_file.exists() and broker.config_file.exists()
        assert shared(tree(broker.directory)) == []
