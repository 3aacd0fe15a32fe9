"""`changestream-worker check-config` and `handlers` as processes: exit codes, lines, masking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RECORDER = "tests.support.recorder:Recorder"


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run `python -m changestream_worker ARGS` with a clean set of config variables."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CHANGESTREAM_WORKER_CONFIG", "MONGODB_URI", "SMTP_PASSWORD")
    }
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "changestream_worker", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=cwd,
        timeout=60,
        check=False,
    )


def config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "mongodb": {"uri": "mongodb://localhost:27017/?replicaSet=rs0", "database": "shop"},
        "handlers": {"rec": {"type": RECORDER, "options": {"collection": "seen"}}},
        "watchers": [{"name": "users", "collection": "users", "handlers": ["rec"]}],
    }
    cfg.update(over)
    return cfg


def write(tmp_path: Path, cfg: dict[str, Any] | str) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def fails_with(
    tmp_path: Path, cfg: dict[str, Any] | str, env: dict[str, str] | None = None
) -> list[str]:
    """check-config exits 2, prints nothing on stdout and no traceback; returns stderr lines."""
    proc = cli("check-config", "-c", str(write(tmp_path, cfg)), env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    return proc.stderr.splitlines()


class TestCheckConfigProblems:
    def test_unknown_field(self, tmp_path: Path) -> None:
        """A misspelt key names its path and suggests the field."""
        cfg = config()
        cfg["watchers"][0]["colection"] = "users"
        assert fails_with(tmp_path, cfg) == [
            "watchers[0].colection: unknown field (did you mean 'collection'?)"
        ]

    def test_bad_duration(self, tmp_path: Path) -> None:
        """A duration that does not parse names its path."""
        cfg = config(checkpoint={"interval": "fast"})
        assert fails_with(tmp_path, cfg) == [
            "checkpoint.interval: invalid duration 'fast': use a number of seconds or units"
            " ms, s, m, h, d (e.g. 500ms, 30s, 1m30s)"
        ]

    def test_bad_enum(self, tmp_path: Path) -> None:
        """A value outside a choice lists the choices and the value given."""
        cfg = config()
        cfg["watchers"][0]["on_invalidate"] = "ignore"
        assert fails_with(tmp_path, cfg) == [
            "watchers[0].on_invalidate: input should be 'stop' or 'restart', got 'ignore'"
        ]

    def test_missing_env_var(self, tmp_path: Path) -> None:
        """An unset variable without default names the path and the variable."""
        cfg = config()
        cfg["mongodb"]["uri"] = "${MONGODB_URI}"
        assert fails_with(tmp_path, cfg) == [
            "mongodb.uri: environment variable MONGODB_URI is not set"
            " (set it, or write ${MONGODB_URI:-default})"
        ]

    def test_unknown_handler_reference(self, tmp_path: Path) -> None:
        """A watcher naming an undefined handler gets the issue's own example line."""
        cfg = config()
        cfg["watchers"][0]["handlers"] = ["welcom"]
        assert fails_with(tmp_path, cfg) == [
            "watchers[0].handlers[0]: unknown handler 'welcom' (defined: rec)"
        ]

    def test_duplicate_watcher(self, tmp_path: Path) -> None:
        """Two watchers with one name: the second is reported."""
        cfg = config()
        cfg["watchers"].append({"name": "users", "collection": "people", "handlers": ["rec"]})
        assert fails_with(tmp_path, cfg) == [
            "watchers[1].name: duplicate watcher name 'users' (also watchers[0])"
        ]

    def test_yaml_syntax_error(self, tmp_path: Path) -> None:
        """Broken YAML names file, line and column."""
        path = tmp_path / "worker.yaml"
        assert fails_with(tmp_path, "mongodb: {uri: x\nwatchers: []\n") == [
            f"{path}:2:9: YAML syntax error: expected ',' or '}}', but got ':'"
            " (while parsing a flow mapping started at line 1)"
        ]

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config file that does not exist: one line, exit 2."""
        proc = cli("check-config", "-c", str(tmp_path / "absent.yaml"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.splitlines() == [f"{tmp_path / 'absent.yaml'}: config file not found"]

    def test_unknown_handler_type(self, tmp_path: Path) -> None:
        """A handler type that is neither installed nor importable names handlers.<name>.type."""
        cfg = config(handlers={"rec": {"type": "mypkg_zz.handlers:Nope"}})
        assert fails_with(tmp_path, cfg) == [
            "handlers.rec.type: cannot import module 'mypkg_zz.handlers' for handler type"
            " 'mypkg_zz.handlers:Nope': no module named 'mypkg_zz' (is the package installed,"
            " or on PYTHONPATH?)"
        ]

    def test_bad_handler_option(self, tmp_path: Path) -> None:
        """Options are checked against the handler's Options model, with their path."""
        cfg = config(handlers={"rec": {"type": RECORDER, "options": {"delay": "slow", "x": 1}}})
        assert fails_with(tmp_path, cfg) == [
            "handlers.rec.options.delay: input should be a valid number, unable to parse string"
            " as a number",
            "handlers.rec.options.x: unknown field (allowed: collection, delay, fail_keys)",
        ]

    def test_several_problems(self, tmp_path: Path) -> None:
        """Every problem gets its own line in one run."""
        cfg = config(http={"port": 99999}, logging={"level": "loud"})
        cfg["watchers"][0]["concurrency"] = 0
        assert fails_with(tmp_path, cfg) == [
            "http.port: input should be less than or equal to 65535",
            "logging.level: input should be 'debug', 'info', 'warning', 'error' or 'critical',"
            " got 'loud'",
            "watchers[0].concurrency: input should be greater than or equal to 1",
        ]


def without_modules(tmp_path: Path, *modules: str) -> dict[str, str]:
    """Environment whose interpreter cannot import ``modules``, as if they were not installed.

    A sitecustomize on a test-only path sets ``sys.modules[name] = None``, which is what
    makes Python's import system raise ImportError; nothing of ours is replaced.
    """
    shim = tmp_path / "shim"
    shim.mkdir()
    lines = ["import sys", *(f"sys.modules[{m!r}] = None" for m in modules)]
    (shim / "sitecustomize.py").write_text("\n".join(lines) + "\n")
    return {"PYTHONPATH": f"{shim}{os.pathsep}{REPO}"}


class TestMissingExtras:
    def test_missing_library_names_the_extra_to_install(self, tmp_path: Path) -> None:
        """A handler whose extra is not installed fails check-config with the pip line, exit 2."""
        cfg = config(
            handlers={
                "cache": {
                    "type": "cache_invalidation",
                    "options": {"keys": ["u:{documentKey._id}"]},
                },
                "rows": {
                    "type": "sql_projection",
                    "options": {"url": "x", "table": "t", "columns": {}},
                },
                "rec": {"type": RECORDER, "options": {}},
            }
        )
        env = without_modules(tmp_path, "redis", "sqlalchemy")
        assert fails_with(tmp_path, cfg, env=env) == [
            "handlers.cache.type: cache_invalidation needs the optional dependency 'redis':"
            " pip install 'changestream-worker[redis]'",
            "handlers.rows.type: sql_projection needs the optional dependency 'sqlalchemy':"
            " pip install 'changestream-worker[sql]'",
        ]

    @pytest.mark.parametrize(
        ("url", "driver", "extra"),
        [
            ("postgresql+asyncpg://postgres@127.0.0.1/test", "asyncpg", "postgres"),
            ("mysql+aiomysql://root@127.0.0.1/test", "aiomysql", "mysql"),
        ],
    )
    def test_missing_sql_driver_names_its_extra(
        self, tmp_path: Path, url: str, driver: str, extra: str
    ) -> None:
        """A projection URL whose driver is not installed names the extra that brings it."""
        options = {"url": url, "table": "t", "columns": {"name": "name"}}
        cfg = config(handlers={"rows": {"type": "sql_projection", "options": options}})
        cfg["watchers"][0]["handlers"] = ["rows"]
        scheme = url.partition("://")[0]
        assert fails_with(tmp_path, cfg, env=without_modules(tmp_path, driver)) == [
            f"handlers.rows.options.url: the {scheme} driver {driver!r} is not installed:"
            f" pip install 'changestream-worker[{extra}]'"
        ]

    def test_same_config_passes_with_the_libraries(self, tmp_path: Path) -> None:
        """With the libraries importable the same handlers pass check-config (the shim is real)."""
        cfg = config(
            handlers={
                "cache": {
                    "type": "cache_invalidation",
                    "options": {"keys": ["u:{documentKey._id}"]},
                },
                "rec": {"type": RECORDER, "options": {}},
            }
        )
        proc = cli("check-config", "-c", str(write(tmp_path, cfg)), env=without_modules(tmp_path))
        assert proc.returncode == 0, proc.stderr

    def test_handlers_lists_the_type_as_unavailable(self, tmp_path: Path) -> None:
        """`handlers --json` keeps going and says why a built-in is unavailable."""
        proc = cli("handlers", "--json", env=without_modules(tmp_path, "redis"))
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert "cache_invalidation" not in data["handlers"]
        assert "changestream-worker[redis]" in data["unavailable"]["cache_invalidation"]
        assert "welcome_email" in data["handlers"]


class TestCheckConfigOutput:
    def test_prints_normalised_masked_config(self, tmp_path: Path) -> None:
        """Exit 0; the YAML printed has defaults filled in, durations in seconds, secrets masked."""
        cfg = config(checkpoint={"interval": "250ms"})
        cfg["mongodb"]["uri"] = "mongodb://app:${DB_PASSWORD}@db1,db2/?replicaSet=rs0"
        cfg["handlers"]["rec"]["options"]["fail_keys"] = []
        path = write(tmp_path, cfg)
        proc = cli("check-config", "-c", str(path), env={"DB_PASSWORD": "hunter2"})
        assert proc.returncode == 0, proc.stderr
        assert "hunter2" not in proc.stdout + proc.stderr
        out = yaml.safe_load(proc.stdout)
        assert out["mongodb"]["uri"] == "mongodb://app:***@db1,db2/?replicaSet=rs0"
        assert out["checkpoint"] == {"interval": 0.25, "max_events": 500}
        assert out["watchers"][0]["retry"] == {
            "attempts": 5,
            "initial_delay": 0.2,
            "max_delay": 30.0,
        }

    def test_masks_secret_handler_options(self, tmp_path: Path) -> None:
        """A secret-named handler option never appears in the output (type checks aside)."""
        cfg = config(
            handlers={"rec": {"type": "no_such_type", "options": {"smtp_password": "pw1"}}}
        )
        proc = cli("check-config", "-c", str(write(tmp_path, cfg)))
        assert proc.returncode == 2 and "pw1" not in proc.stdout + proc.stderr

    def test_config_from_environment(self, tmp_path: Path) -> None:
        """Without -c, $CHANGESTREAM_WORKER_CONFIG names the file."""
        path = write(tmp_path, config())
        proc = cli("check-config", env={"CHANGESTREAM_WORKER_CONFIG": str(path)})
        assert proc.returncode == 0, proc.stderr
        assert yaml.safe_load(proc.stdout)["watchers"][0]["name"] == "users"

    def test_default_path(self, tmp_path: Path) -> None:
        """Without -c or the variable, config/worker.yaml in the working directory is used."""
        proc = cli("check-config", cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.splitlines() == ["config/worker.yaml: config file not found"]


class TestOtherCommands:
    def test_handlers_json(self, tmp_path: Path) -> None:
        """`handlers --json` gives each type's options schema, including types a config names."""
        proc = cli("handlers", "--json", "-c", str(write(tmp_path, config())))
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        rec = data["handlers"][RECORDER]
        assert rec["class"] == RECORDER
        assert set(rec["options_schema"]["properties"]) == {"collection", "delay", "fail_keys"}
        for name in ("welcome_email", "cache_invalidation", "order_fulfilment", "sql_projection"):
            assert name in data["handlers"] or name in data["unavailable"]

    def test_handlers_text(self) -> None:
        """`handlers` prints a readable list and exits 0 even if a built-in is unavailable."""
        proc = cli("handlers")
        assert proc.returncode == 0 and "Traceback" not in proc.stderr

    def test_version(self) -> None:
        """--version prints the package version."""
        proc = cli("--version")
        assert proc.returncode == 0 and proc.stdout.startswith("changestream-worker ")

    @pytest.mark.parametrize("args", [["dlq"], ["checkpoint", "reset", "--watcher", "w"], ["nope"]])
    def test_usage_errors(self, args: list[str]) -> None:
        """Wrong arguments print usage and exit 2 (argparse), without a traceback."""
        proc = cli(*args)
        assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr
