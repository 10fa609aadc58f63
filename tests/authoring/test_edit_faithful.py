"""dopemux_update.edit on real-world shapes: minimal-diff YAML, rename_key, edit_env, move,
add_index/drop_index and compose_env."""

from __future__ import annotations

import difflib
import os
import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dopemux_update import EditError, edit
from dopemux_update._authoring import _edit_yaml

# The shapes of the upstream Dopemux compose file: flow healthchecks with inner spaces, flow
# maps, list-form environments, whitespace-only lines, trailing spaces, comments, no final
# newline.
COMPOSE = (
    "# Dopemux canonical compose\n"
    "name: dopemux\n"
    "\n"
    "services:\n"
    "  # ========================================\n"
    "  # INFRASTRUCTURE\n"
    "  # ========================================\n"
    "\n"
    "  postgres:\n"
    "    image: apache/age:release_PG16_1.6.0   \n"
    "    environment:\n"
    "      - POSTGRES_USER=dopemux_age\n"
    '      - "POSTGRES_PASSWORD=${AGE_PASSWORD:-dev_password}"   # from .env\n'
    "      - LEAN_MCP_TOKEN\n"
    "    healthcheck:\n"
    '      test: [ "CMD-SHELL", "pg_isready -U dopemux_age || exit 1" ]\n'
    "      timeout: 5s\n"
    "    labels: { tier: db, backup: 'yes' }\n"
    "  \n"
    "  redis-events:\n"
    "    image: redis:7-alpine\n"
    "    healthcheck:\n"
    '      test: [ "CMD", "redis-cli", "ping" ]\n'
    "  redis-primary:\n"
    "    healthcheck:\n"
    '      test: [ "CMD", "redis-cli", "ping" ]\n'
    "  qdrant:\n"
    "    healthcheck:\n"
    '      test: [ "CMD-SHELL", "curl -fsS localhost:6333/healthz || exit 1" ]\n'
    "  conport:\n"
    "    environment:\n"
    "      CONPORT_DB_PATH: /data/conport.db  # inside the container\n"
    "      LOG_LEVEL: info\n"
    "    healthcheck:\n"
    '      test: [ "CMD", "python", "-c", "import urllib.request" ]\n'
    "  mcp-broker:\n"
    "    healthcheck:\n"
    '      test: [ "CMD", "wget", "-qO-", "localhost:3000/health" ]\n'
    "\n"
    "networks:\n"
    "  dopemux-network:\n"
    "    external: true\n"
    "    name: dopemux-network"
)

# The shape of the upstream MCP proxy configuration: flow command lists, aligned comments.
PROXY = """\
# MCP Proxy Configuration
# Multi-workspace support: Services can accept workspace_path parameter

mcp_servers:
  exa:
    command: ["docker", "exec", "-i", "mcp-exa", "python", "server.py"]
    port: 8003
    supports_workspace: false  # Search service (global)

  pal:  # reasoning
    command: ["docker", "exec", "-i", "mcp-pal", "python", "-m", "pal_mcp_server"]
    port: 8004
    supports_workspace: true   # Multi-workspace aware
    workspace_param: "workspace_path"  # Parameter name for workspace
"""


def changed_lines(before: str, after: str) -> list[str]:
    """The lines removed (-) and added (+) between two texts."""
    diff = difflib.unified_diff(before.splitlines(True), after.splitlines(True), n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


# --------------------------------------------------------------------------- minimal-diff YAML


def test_changing_one_value_rewrites_only_its_line(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(COMPOSE)
    with edit.edit_yaml(path) as doc:
        doc["services"]["redis-events"]["image"] = "redis:7.4-alpine"
    assert changed_lines(COMPOSE, path.read_text()) == [
        "-    image: redis:7-alpine\n",
        "+    image: redis:7.4-alpine\n",
    ]


def test_adding_a_service_leaves_flow_lists_spacing_and_whitespace_lines_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(COMPOSE)
    with edit.edit_yaml(path) as doc:
        edit.set_in(
            doc,
            ("services", "mcp-zen"),
            {"image": "ghcr.io/dopemux/zen-mcp:0.3.0", "ports": [edit.quoted("3020:3020")]},
        )
    text = path.read_text()
    assert changed_lines(COMPOSE, text) == [
        "+  mcp-zen:\n",
        "+    image: ghcr.io/dopemux/zen-mcp:0.3.0\n",
        "+    ports:\n",
        '+      - "3020:3020"\n',
    ]
    assert not text.endswith("\n")  # still no final newline
    assert text.count('test: [ "CMD') == 6


def test_adding_a_key_and_deleting_it_again_gives_the_file_back_byte_for_byte(
    tmp_path: Path,
) -> None:
    path = tmp_path / "compose.yml"
    path.write_bytes(COMPOSE.encode())
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, ("services", "mcp-zen", "image"), "zen:1")
        edit.set_in(doc, ("networks", "dopemux-network", "driver"), "bridge")  # the last line
    with edit.edit_yaml(path) as doc:
        edit.delete_in(doc, ("services", "mcp-zen"))
        edit.delete_in(doc, ("networks", "dopemux-network", "driver"))
    assert path.read_bytes() == COMPOSE.encode()


def test_an_edit_inside_a_normalised_flow_list_rewrites_only_that_line(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(COMPOSE)
    with edit.edit_yaml(path) as doc:
        doc["services"]["qdrant"]["healthcheck"]["test"][1] = "curl -f localhost:6333/readyz"
    assert changed_lines(COMPOSE, path.read_text()) == [
        '-      test: [ "CMD-SHELL", "curl -fsS localhost:6333/healthz || exit 1" ]\n',
        '+      test: ["CMD-SHELL", "curl -f localhost:6333/readyz"]\n',
    ]


def test_new_lines_get_crlf_and_the_other_lines_keep_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    original = PROXY.replace("\n", "\r\n").encode()
    path.write_bytes(original)
    with edit.edit_yaml(path) as doc:
        edit.set_in(doc, ("mcp_servers", "exa", "port"), 8013)
    data = path.read_bytes()
    assert data == original.replace(b"port: 8003", b"port: 8013")


def test_an_unfaithful_merge_falls_back_to_the_full_rendering_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(PROXY)
    monkeypatch.setattr(_edit_yaml, "_merge", lambda *_args: "mcp_servers: broken\n")
    with capture_logs() as logs, edit.edit_yaml(path) as doc:
        edit.set_in(doc, ("mcp_servers", "exa", "port"), 8013)
    assert "port: 8013" in path.read_text()
    assert 'command: ["docker", "exec"' in path.read_text()
    assert [log["event"] for log in logs] == ["edit.yaml.full_rewrite"]


# --------------------------------------------------------------------------- rename_key


def test_rename_key_keeps_position_value_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(PROXY)
    with edit.edit_yaml(path) as doc:
        assert edit.rename_key(doc, ("mcp_servers", "pal"), "pal-reasoning")
        assert edit.rename_key(doc, ("mcp_servers", "exa", "port"), "http_port")
        assert list(doc["mcp_servers"]) == ["exa", "pal-reasoning"]
    assert changed_lines(PROXY, path.read_text()) == [
        "-    port: 8003\n",
        "+    http_port: 8003\n",
        "-  pal:  # reasoning\n",
        "+  pal-reasoning:  # reasoning\n",
    ]
    with edit.edit_yaml(path) as doc:
        edit.rename_key(doc, ("mcp_servers", "pal-reasoning"), "pal")
        edit.rename_key(doc, ("mcp_servers", "exa", "http_port"), "port")
    assert path.read_text() == PROXY


def test_rename_key_is_idempotent_and_refuses_to_overwrite() -> None:
    doc = {"services": {"old": 1, "other": 2}}
    assert edit.rename_key(doc, ("services", "old"), "new")
    assert not edit.rename_key(doc, ("services", "old"), "new")  # done already
    assert list(doc["services"]) == ["new", "other"]
    with pytest.raises(EditError, match="already has a key 'other'"):
        edit.rename_key(doc, ("services", "new"), "other")
    assert doc == {"services": {"new": 1, "other": 2}}


# --------------------------------------------------------------------------- edit_env

ENV = (
    "# Dopemux Configuration\n"
    "\n"
    "AGE_PASSWORD=your_secure_age_password_here  # rotate me\n"
    'export REDIS_URL="redis://cache:6379/0#primary"   # a quoted # is no comment\n'
    "SINGLE='a # b'\n"
    "ALTP_OPUS_KEY=  # For altp-opus tier (high thinking tasks)\n"
    "HASH=a#b\n"
    'MULTI="line one\n'
    'line two"\n'
    "LEAN_MCP_TOKEN\n"
    "GEMINI_API_KEY="
)


def test_edit_env_reads_values_as_compose_does(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(ENV)
    with edit.edit_env(path) as env:
        assert dict(env) == {
            "AGE_PASSWORD": "your_secure_age_password_here",
            "REDIS_URL": "redis://cache:6379/0#primary",
            "SINGLE": "a # b",
            "ALTP_OPUS_KEY": "",
            "HASH": "a#b",
            "MULTI": "line one\nline two",
            "GEMINI_API_KEY": "",
        }
    assert path.read_text() == ENV


def test_edit_env_changes_only_the_lines_of_changed_keys_and_appends_new_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / ".env"
    path.write_text(ENV)
    path.chmod(0o600)
    with edit.edit_env(path) as env:
        env["REDIS_URL"] = "redis://cache:6379/1#primary"
        env["SINGLE"] = "it's"  # cannot stay in single quotes
        env["ZEN_API_KEY"] = "has space"
    text = path.read_text()
    assert changed_lines(ENV, text) == [
        '-export REDIS_URL="redis://cache:6379/0#primary"   # a quoted # is no comment\n',
        "-SINGLE='a # b'\n",
        '+export REDIS_URL="redis://cache:6379/1#primary"   # a quoted # is no comment\n',
        '+SINGLE="it\'s"\n',
        "-GEMINI_API_KEY=",
        "+GEMINI_API_KEY=\n",
        '+ZEN_API_KEY="has space"',
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with edit.edit_env(path) as env:
        del env["ZEN_API_KEY"]
        env["REDIS_URL"] = "redis://cache:6379/0#primary"
        env["SINGLE"] = "a # b"
    assert path.read_text() == ENV.replace("SINGLE='a # b'", 'SINGLE="a # b"')


def test_deleting_a_key_removes_its_lines_and_keeps_a_missing_final_newline(
    tmp_path: Path,
) -> None:
    path = tmp_path / ".env"
    path.write_text(ENV)
    with edit.edit_env(path) as env:
        del env["MULTI"]
        del env["GEMINI_API_KEY"]
    assert path.read_text() == ENV.replace('MULTI="line one\nline two"\n', "").replace(
        "LEAN_MCP_TOKEN\nGEMINI_API_KEY=", "LEAN_MCP_TOKEN"
    )


def test_an_unchanged_env_file_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(ENV)
    before = path.stat().st_ino, path.stat().st_mtime_ns
    with edit.edit_env(path) as env:
        env["HASH"] = "a#b"
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == before


def test_a_line_that_is_not_an_assignment_is_an_error_naming_file_and_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / ".env"
    path.write_text("A=1\nthis is not an env line\n")
    with pytest.raises(EditError, match=r"\.env.*line 2: not KEY=VALUE"), edit.edit_env(path):
        pass


# --------------------------------------------------------------------------- move


def test_move_creates_parents_and_removes_the_folders_it_emptied(tmp_path: Path) -> None:
    old = tmp_path / "config" / "mcp" / "legacy" / "proxy.yaml"
    old.parent.mkdir(parents=True)
    old.write_text(PROXY)
    old.chmod(0o640)
    (tmp_path / "config" / "app.yaml").write_text("a: 1\n")
    new = tmp_path / "config" / "mcp-proxy" / "v2" / "proxy.yaml"
    assert edit.move(old, new, root=tmp_path)
    assert new.read_text() == PROXY
    assert stat.S_IMODE(new.stat().st_mode) == 0o640
    assert not (tmp_path / "config" / "mcp").exists()  # emptied: gone, with legacy/
    assert (tmp_path / "config" / "app.yaml").exists()
    assert not edit.move(old, new, root=tmp_path)  # moved already


def test_move_never_removes_the_root_and_never_overwrites(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("a")
    assert edit.move(root / "a.txt", tmp_path / "elsewhere" / "a.txt", root=root)
    assert root.is_dir()
    (root / "b.txt").write_text("b")
    (root / "c.txt").write_text("c")
    with pytest.raises(EditError, match="refusing to overwrite"):
        edit.move(root / "b.txt", root / "c.txt")
    assert (root / "b.txt").read_text() == "b"
    with pytest.raises(EditError, match="no such file or folder"):
        edit.move(root / "missing", root / "also-missing")


def test_move_without_root_keeps_the_common_parent(tmp_path: Path) -> None:
    (tmp_path / "old" / "deep").mkdir(parents=True)
    (tmp_path / "old" / "deep" / "f").write_text("x")
    assert edit.move(tmp_path / "old" / "deep" / "f", tmp_path / "new" / "f")
    assert sorted(os.listdir(tmp_path)) == ["new"]


# --------------------------------------------------------------------------- indexes


@pytest.fixture
def conport(tmp_path: Path) -> Path:
    path = tmp_path / "conport.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, summary TEXT, tag TEXT)")
        conn.executemany("INSERT INTO decisions VALUES (?, ?, ?)", [(1, "a", "x"), (2, "b", "x")])
        conn.commit()
    return path


def index_sql(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
        ).fetchall()


def test_add_index_and_drop_index_are_idempotent_and_quote_names(conport: Path) -> None:
    assert edit.add_index(conport, "decisions", 'idx "odd" name', ["tag", "summary"])
    assert not edit.add_index(conport, "decisions", 'idx "odd" name', ["tag", "summary"])
    assert edit.index_exists(conport, 'IDX "ODD" NAME')
    assert index_sql(conport) == [
        (
            'idx "odd" name',
            'CREATE INDEX "idx ""odd"" name" ON "decisions" ("tag", "summary")',
        )
    ]
    assert edit.drop_index(conport, 'idx "odd" name')
    assert not edit.drop_index(conport, 'idx "odd" name')
    assert index_sql(conport) == []


def test_a_unique_index_the_rows_violate_is_refused_and_nothing_changes(conport: Path) -> None:
    with pytest.raises(EditError, match=r"conport\.db.*UNIQUE constraint failed"):
        edit.add_index(conport, "decisions", "idx_tag", "tag", unique=True)
    assert index_sql(conport) == []
    assert edit.add_index(conport, "decisions", "idx_summary", "summary", unique=True)
    assert "CREATE UNIQUE INDEX" in index_sql(conport)[0][1]


def test_add_index_names_a_missing_column_or_an_index_on_another_table(conport: Path) -> None:
    with pytest.raises(EditError, match="no column 'nope' in 'decisions'"):
        edit.add_index(conport, "decisions", "idx_nope", ["nope"])
    with closing(sqlite3.connect(conport)) as conn:
        conn.execute("CREATE TABLE other (v TEXT)")
        conn.execute("CREATE INDEX idx_v ON other (v)")
        conn.commit()
    with pytest.raises(EditError, match="already exists on table 'other'"):
        edit.add_index(conport, "decisions", "idx_v", ["tag"])


# --------------------------------------------------------------------------- compose_env


def test_compose_env_reads_and_writes_list_and_map_forms_in_place(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(COMPOSE)
    with edit.edit_yaml(path) as doc:
        listed = edit.compose_env(doc, "postgres")
        mapped = edit.compose_env(doc, "conport")
        assert dict(listed) == {
            "POSTGRES_USER": "dopemux_age",
            "POSTGRES_PASSWORD": "${AGE_PASSWORD:-dev_password}",
            "LEAN_MCP_TOKEN": None,
        }
        assert dict(mapped) == {"CONPORT_DB_PATH": "/data/conport.db", "LOG_LEVEL": "info"}
        listed["POSTGRES_DB"] = "dopemux_knowledge_graph"
        listed["POSTGRES_USER"] = "dopemux"
        mapped["LOG_LEVEL"] = "debug"
        mapped["FTS_ENABLED"] = "1"
    assert changed_lines(COMPOSE, path.read_text()) == [
        "-      - POSTGRES_USER=dopemux_age\n",
        "+      - POSTGRES_USER=dopemux\n",
        "+      - POSTGRES_DB=dopemux_knowledge_graph\n",
        "-      LOG_LEVEL: info\n",
        "+      LOG_LEVEL: debug\n",
        "+      FTS_ENABLED: '1'\n",
    ]
    with edit.edit_yaml(path) as doc:
        listed = edit.compose_env(doc, "postgres")
        mapped = edit.compose_env(doc, "conport")
        del listed["POSTGRES_DB"]
        listed["POSTGRES_USER"] = "dopemux_age"
        del mapped["FTS_ENABLED"]
        mapped["LOG_LEVEL"] = "info"
    assert path.read_text() == COMPOSE


def test_compose_env_keeps_a_quoted_items_quotes_and_comment(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(COMPOSE)
    with edit.edit_yaml(path) as doc:
        edit.compose_env(doc, "postgres")["POSTGRES_PASSWORD"] = "${AGE_PASSWORD:?set it}"  # noqa: S105
    assert changed_lines(COMPOSE, path.read_text()) == [
        '-      - "POSTGRES_PASSWORD=${AGE_PASSWORD:-dev_password}"   # from .env\n',
        '+      - "POSTGRES_PASSWORD=${AGE_PASSWORD:?set it}"         # from .env\n',
    ]


def test_compose_env_gives_a_service_without_environment_a_map(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(COMPOSE)
    with edit.edit_yaml(path) as doc:
        env = edit.compose_env(doc, "qdrant")
        assert dict(env) == {}
        env["QDRANT__LOG_LEVEL"] = "INFO"
        with pytest.raises(EditError, match="no service 'nope'"):
            edit.compose_env(doc, "nope")
    assert "    environment:\n      QDRANT__LOG_LEVEL: INFO\n" in path.read_text()


def test_compose_env_quotes_a_new_item_when_all_the_others_are(tmp_path: Path) -> None:
    path = tmp_path / "compose.yml"
    text = 'services:\n  a:\n    environment:\n      - "A=1"\n      - "B=2"\n'
    path.write_text(text)
    with edit.edit_yaml(path) as doc:
        edit.compose_env(doc, "a")["C"] = "3"
    assert path.read_text() == text + '      - "C=3"\n'


def test_changing_a_flow_map_rewrites_its_line_only_and_keeps_the_blank_line_after_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "compose.yml"
    path.write_text(COMPOSE)
    with capture_logs() as logs, edit.edit_yaml(path) as doc:
        doc["services"]["postgres"]["labels"]["tier"] = "database"
    assert changed_lines(COMPOSE, path.read_text()) == [
        "-    labels: { tier: db, backup: 'yes' }\n",
        "+    labels: {tier: database, backup: 'yes'}\n",
    ]
    assert logs == []  # carried over, not a full rewrite


def test_a_document_that_is_a_sequence_keeps_its_dashes_at_column_0(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    text = "# registry\n- name: postgres\n  port: 5432\n- name: redis\n  ports: [ 6379 ]\n"
    path.write_text(text)
    with edit.edit_yaml(path) as doc:
        doc[0]["port"] = 5433
    assert changed_lines(text, path.read_text()) == ["-  port: 5432\n", "+  port: 5433\n"]


def key_paths(node: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            found.extend(key_paths(value, (*prefix, key)))
    return found


def test_every_block_mapping_of_the_compose_file_round_trips_an_added_key(
    tmp_path: Path,
) -> None:
    """Adding a key under any block mapping adds lines only; deleting it restores the bytes."""
    path = tmp_path / "compose.yml"
    path.write_text(COMPOSE)
    mappings = [
        keys
        for keys in key_paths(edit.load_yaml(path))
        if isinstance(edit.get_in(edit.load_yaml(path), keys), dict)
        and not COMPOSE.count(f"{keys[-1]}: {{")  # a flow mapping's line is rewritten
    ]
    assert len(mappings) > 15
    for keys in mappings:
        with capture_logs() as logs, edit.edit_yaml(path) as doc:
            edit.set_in(doc, (*keys, "zz_added"), "value")
        changed = changed_lines(COMPOSE, path.read_text())
        added = {line[1:] for line in changed if line.startswith("+")}
        removed = [line[1:] for line in changed if line.startswith("-")]
        # Only lines added; the file's last line gets a newline when a line goes after it.
        assert all(line + "\n" in added and not line.endswith("\n") for line in removed), keys
        with edit.edit_yaml(path) as doc:
            edit.delete_in(doc, (*keys, "zz_added"))
        assert path.read_text() == COMPOSE, keys
        assert logs == []
