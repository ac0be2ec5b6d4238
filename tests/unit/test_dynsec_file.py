"""The dynamic-security file as the plugin reads it: hashes, the starting file, upserts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from gateway.identities.dynsec import DynsecError, NewAccount, _Command
from gateway.identities.dynsec_file import (
    hash_password,
    init_file,
    write_accounts,
    write_role,
    write_roles,
)

# Written by `mosquitto_ctrl dynsec init ds.json admin secretpw` (Mosquitto 2.0.11).
CTRL_SALT = "Ds4gSLH5STSBNaqu"
CTRL_HASH = (
    "80AN2i2pc6R2GYYhkdTBGMAupJJfch1VCz3mTbco5tmMAu4j1zSOzpN0TDv4DzLitmWaQ+7lE6Gg27m/OcslIA=="
)


def test_a_hash_is_the_one_mosquitto_ctrl_writes() -> None:
    assert hash_password("secretpw", salt=base64.b64decode(CTRL_SALT)) == (CTRL_HASH, CTRL_SALT)
    digest, salt = hash_password("secretpw")
    assert len(base64.b64decode(salt)) == 12 and digest != CTRL_HASH


def test_the_starting_file_holds_the_admin_and_the_default_access(tmp_path: Path) -> None:
    path = tmp_path / "dynsec.json"
    init_file(path, "admin", "pw", default_access={"publishClientReceive": False})
    document = json.loads(path.read_text())
    (admin,) = document["clients"]
    assert admin["username"] == "admin" and admin["roles"] == [{"rolename": "admin"}]
    assert hash_password("pw", salt=base64.b64decode(admin["salt"]))[0] == admin["password"]
    assert document["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    assert path.stat().st_mode & 0o777 == 0o600


def test_accounts_are_upserted_bound_and_disabled_as_asked(tmp_path: Path) -> None:
    path = tmp_path / "dynsec.json"
    init_file(path, "admin", "pw")
    write_role(path, "gateway", [("subscribePattern", "devices/#")])
    assert write_accounts(path, [NewAccount("d1", "a", "d1"), NewAccount("d2", "b", "d2")]) == 2
    written = write_accounts(
        path,
        [NewAccount("d1", "c", "d1", roles=("gateway",)), NewAccount("gw", "g", "")],
        disabled=["d1"],
    )
    assert written == 2
    clients = {c["username"]: c for c in json.loads(path.read_text())["clients"]}
    assert sorted(clients) == ["admin", "d1", "d2", "gw"]
    d1 = clients["d1"]
    assert d1["clientid"] == "d1" and d1["disabled"] is True
    assert d1["roles"] == [{"rolename": "gateway"}]
    assert hash_password("c", salt=base64.b64decode(d1["salt"]))[0] == d1["password"]
    assert "clientid" not in clients["gw"] and "disabled" not in clients["d2"]
    assert [p.name for p in tmp_path.iterdir()] == ["dynsec.json"]  # nothing half-written left


def test_roles_are_upserted_in_one_write_keeping_the_others(tmp_path: Path) -> None:
    path = tmp_path / "dynsec.json"
    init_file(path, "admin", "pw")
    write_role(path, "device:a", [("subscribePattern", "devices/#")])
    written = write_roles(
        path,
        [
            ("device:a", [("publishClientSend", "devices/a/+")]),
            ("device:b", [("publishClientSend", "devices/b/+")]),
        ],
    )
    assert written == 2
    roles = {r["rolename"]: r["acls"] for r in json.loads(path.read_text())["roles"]}
    assert set(roles) == {"admin", "device:a", "device:b"}
    assert roles["device:a"] == [
        {"acltype": "publishClientSend", "topic": "devices/a/+", "allow": True}
    ]


def test_passwords_never_show_in_a_repr() -> None:
    command = _Command(command="createClient", username="d1", password="hunter2")
    assert "hunter2" not in repr(command) and "hunter2" not in str(command)
    assert "hunter2" not in repr(NewAccount("d1", "hunter2", "d1"))
    error = DynsecError("refused", [("createClient", "d1", "Client already exists")])
    assert error.failures == [("createClient", "d1", "Client already exists")]
