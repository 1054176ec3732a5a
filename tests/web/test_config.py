"""Settings you can trust: every Config field read from its type, checked, from file, environment and options.

Unit level (web/settings.py through `Config.from_env`); the real `serve`
process refusing bad settings, and a config file taking effect on a running
appliance, are in test_config_serve.py. The last tests keep the docs true:
every setting is in the README's table and in docs/cargohold.example.toml,
and every CARGOHOLD_* name the repository uses is known.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

import pytest

from web.config import Config

# Only Config at the top: against code without web/settings.py each test still runs, and fails on its own point.

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "docs" / "cargohold.example.toml"


def from_env(**env: str) -> Config:
    return Config.from_env({f"CARGOHOLD_{k.upper()}": v for k, v in env.items()})


def refused(environ: dict[str, str] | None = None, **kwargs: object) -> str:
    with pytest.raises(ValueError) as caught:  # settings.ConfigError
        Config.from_env(environ or {}, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --- booleans ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["true", "TRUE", "1", "yes", "Yes", "on", " on "])
def test_true_words(word: str) -> None:
    assert from_env(tls=word).tls is True


@pytest.mark.parametrize("word", ["false", "False", "0", "no", "NO", "off"])
def test_false_words(word: str) -> None:
    assert from_env(tls=word, seed_scan=word).seed_scan is False


@pytest.mark.parametrize("word", ["maybe", "", "2", "enabled", "y", "t"])
def test_anything_else_is_not_a_boolean(word: str) -> None:
    # Before: anything not truthy silently meant False.
    assert refused({"CARGOHOLD_SEED_SCAN": word}) == (
        f"CARGOHOLD_SEED_SCAN={word!r}: not a boolean (use true or false, 1 or 0, yes or no, on or off)")


# --- integers and limits ----------------------------------------------------------------------------------

def test_integers_parse() -> None:
    config = from_env(threads=" 8 ", login_failures_per_user="0", graceful_timeout="0")
    assert (config.threads, config.login_failures_per_user, config.graceful_timeout) == (8, 0, 0)


@pytest.mark.parametrize(("name", "raw", "problem"), [
    ("workers", "two", "not a whole number"),
    ("workers", "1.5", "not a whole number"),
    ("workers", "", "not a whole number"),
    ("workers", "0", "must be at least 1"),
    ("threads", "-4", "must be at least 1"),
    ("graceful_timeout", "-1", "must be at least 0"),
    ("max_requests_per_address", "-1", "must be at least 0"),
    ("login_lockout_seconds", "-300", "must be at least 0"),
    ("token_expiry_seconds", "0", "must be at least 1"),
])
def test_bad_integers_are_refused_naming_the_variable(name: str, raw: str, problem: str) -> None:
    assert refused({f"CARGOHOLD_{name.upper()}": raw}) == f"CARGOHOLD_{name.upper()}={raw!r}: {problem}"


# --- byte counts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ("4194304", 4194304), ("0", 0), ("512K", 512 << 10), ("512KiB", 512 << 10), ("512 MiB", 512 << 20),
    ("512m", 512 << 20), ("3G", 3 << 30), ("1GiB", 1 << 30), ("2T", 2 << 40), ("1 TiB", 1 << 40),
    ("500GB", 500 * 10**9), ("1kb", 1000), ("7MB", 7 * 10**6), ("1TB", 10**12), ("10B", 10),
])
def test_byte_counts(text: str, value: int) -> None:
    from web.settings import parse_bytes

    assert parse_bytes(text) == value
    assert from_env(import_reserve_bytes=text).import_reserve_bytes == value


@pytest.mark.parametrize("text", ["12XB", "1.5G", "-1", "1 G B", "G", "", "0x10", "1e9", "ten", "5 GiBs"])
def test_anything_else_is_not_a_byte_count(text: str) -> None:
    assert refused({"CARGOHOLD_IMPORT_RESERVE_BYTES": text}) == (
        f"CARGOHOLD_IMPORT_RESERVE_BYTES={text!r}: not a byte count (a number of bytes, optionally with a unit: "
        "K, M, G, T or KiB, MiB, GiB, TiB are binary; KB, MB, GB, TB decimal)")


def test_every_byte_valued_setting_takes_units() -> None:
    from web.config import config_specs

    byte_settings = {name for name, spec in config_specs().items() if spec.kind == "bytes"}
    assert {"bundle_max_bytes", "bundle_max_unpacked_bytes", "import_reserve_bytes",
            "max_manifest_bytes"} <= byte_settings
    # A field named like a byte count that is a plain int would refuse "512MiB": declare it `Bytes`.
    assert byte_settings == {name for name in config_specs() if name.endswith("_bytes")}
    config = Config.from_env({f"CARGOHOLD_{name.upper()}": "2MiB" for name in byte_settings})
    assert all(getattr(config, name) == 2 << 20 for name in byte_settings)


def test_a_zero_limit_that_means_nothing_is_refused() -> None:
    assert refused({"CARGOHOLD_MAX_MANIFEST_BYTES": "0"}) == "CARGOHOLD_MAX_MANIFEST_BYTES='0': must be at least 1"


# --- strings, choices, paths, optional values -------------------------------------------------------------

def test_front_is_an_enumeration() -> None:
    assert from_env(front="none").front == "none"
    assert refused({"CARGOHOLD_FRONT": "apache"}) == "CARGOHOLD_FRONT='apache': not one of nginx, none"
    assert refused({"CARGOHOLD_FRONT": "NGINX"}) == "CARGOHOLD_FRONT='NGINX': not one of nginx, none"


def test_mapping_rules_are_checked_at_start() -> None:
    assert from_env(mapping_rules="a.io/x=y").mapping_rules == "a.io/x=y"
    assert refused({"CARGOHOLD_MAPPING_RULES": "a.io/x"}) == (
        "CARGOHOLD_MAPPING_RULES='a.io/x': invalid mapping rule 'a.io/x': expected prefix=replacement")


def test_an_empty_optional_setting_is_unset() -> None:
    config = from_env(admin_password="", tls_cert="", external_url="", seed_dir="")
    assert (config.admin_password, config.tls_cert, config.external_url, config.seed_dir) == (None, None, None, None)
    assert from_env(tls_cert="/etc/c.pem").tls_cert == Path("/etc/c.pem")
    assert from_env(nginx="").nginx == ""  # a plain string may be empty: "find it"


def test_a_secret_is_never_in_an_error(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'admin_password = ["Sekrit-Value-123"]\n')
    message = refused({}, config_file=file)
    assert "Sekrit" not in message and "admin_password" in message


# --- unknown variables --------------------------------------------------------------------------------------

def test_an_unknown_variable_is_refused_with_the_likely_name() -> None:
    assert refused({"CARGOHOLD_TLS_SANS": "10.0.0.1"}) == (
        "unknown environment variable CARGOHOLD_TLS_SANS (did you mean CARGOHOLD_TLS_SAN?): "
        "cargohold reads no such setting (README, Configuration)")
    assert refused({"CARGOHOLD_ADMIN_PASWORD": "x"}).startswith(
        "unknown environment variable CARGOHOLD_ADMIN_PASWORD (did you mean CARGOHOLD_ADMIN_PASSWORD?)")


def test_every_unknown_variable_is_named_and_a_far_one_gets_no_guess() -> None:
    message = refused({"CARGOHOLD_WORKER": "2", "CARGOHOLD_ZZZ": "1", "PATH": "/bin", "cargohold_x": "1"})
    assert message == ("unknown environment variable CARGOHOLD_WORKER (did you mean CARGOHOLD_WORKERS?); "
                       "unknown environment variable CARGOHOLD_ZZZ: cargohold reads no such setting "
                       "(README, Configuration)")


def test_known_variables_that_are_not_settings_are_accepted() -> None:
    from web.config import OTHER_VARIABLES

    Config.from_env({name: "x" for name in OTHER_VARIABLES if name != "CARGOHOLD_CONFIG"})


def test_every_cargohold_name_in_the_repository_is_known() -> None:
    """Config fields plus OTHER_VARIABLES cover every CARGOHOLD_* name the code, tests, scripts and docs use."""
    from web.config import OTHER_VARIABLES

    # Set on the browser's `window` by the upload tests and benchmark, never read from the environment.
    javascript_globals = {"CARGOHOLD_CHUNK_SIZE", "CARGOHOLD_PARALLEL_UPLOADS"}
    known = {f"CARGOHOLD_{f.name.upper()}" for f in fields(Config)} | set(OTHER_VARIABLES) | javascript_globals
    found: dict[str, str] = {}
    for top in ("registry", "bundles", "web", "tests", "scripts", "docs", "README.md", "Dockerfile",
                "pyproject.toml"):
        root = REPO_ROOT / top
        for path in [root] if root.is_file() else root.rglob("*"):
            if not path.is_file() or path.suffix in (".png", ".pyc", ".ico", ".woff2") or (
                    path.name.startswith("test_config")):  # these tests' deliberate misspellings
                continue
            # (A name right after "unknown environment variable" is a documented refusal's typo.)
            text = path.read_text(errors="replace")
            for name in re.findall(r"(?<!unknown environment variable )CARGOHOLD_[A-Z0-9_]*[A-Z0-9]", text):
                found.setdefault(name, str(path.relative_to(REPO_ROOT)))
    assert "CARGOHOLD_SCHEMATHESIS_EXAMPLES" in found  # the scan reaches the tests
    unknown = {name: where for name, where in found.items() if name not in known}
    assert not unknown, f"add these to web.config.OTHER_VARIABLES (or make them Config fields): {unknown}"


# --- the config file ---------------------------------------------------------------------------------------

def test_precedence_defaults_file_environment_options(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'project = "from-file"\nworkers = 3\nthreads = 7\ntls = true\n')
    env = {"CARGOHOLD_CONFIG": str(file), "CARGOHOLD_WORKERS": "5", "CARGOHOLD_THREADS": "9"}
    config = Config.from_env(env, threads=11)
    assert (config.project, config.workers, config.threads, config.tls) == ("from-file", 5, 11, True)
    assert config.bind == Config().bind  # not in the file: the default
    # An explicit file (--config) wins over $CARGOHOLD_CONFIG.
    other = write(tmp_path / "d.toml", 'project = "from-option"\n')
    assert Config.from_env(env, config_file=other).project == "from-option"


def test_file_values_of_every_kind(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", """
bind = "0.0.0.0:5000"          # a string
workers = "4"                  # a string where an int is expected parses
graceful_timeout = 0
bundle_max_bytes = "64 GiB"    # a byte count with a unit
import_reserve_bytes = 1048576 # or plain bytes
allow_unsigned_bundles = false
seed_scan = "off"              # a boolean as a string takes the same words
tls_cert = "tls/server.crt"    # relative: to the file's directory
tls_key = "/etc/ssl/server.key"
external_url = ""              # empty: unset
""")
    config = Config.from_env({}, config_file=file)
    assert config.bind == "0.0.0.0:5000" and config.workers == 4 and config.graceful_timeout == 0
    assert config.bundle_max_bytes == 64 << 30 and config.import_reserve_bytes == 1 << 20
    assert config.allow_unsigned_bundles is False and config.seed_scan is False
    assert config.tls_cert == tmp_path / "tls" / "server.crt" and config.tls_key == Path("/etc/ssl/server.key")
    assert config.external_url is None


@pytest.mark.parametrize(("text", "problem"), [
    ('project = "x"\n\ntls_sans = "a"\n', "line 3: unknown setting 'tls_sans' (did you mean tls_san?): cargohold "
                                          "reads no such setting (README, Configuration)"),
    ('CARGOHOLD_BIND = "0.0.0.0:1"\n', "line 1: unknown setting 'CARGOHOLD_BIND' (did you mean bind?): cargohold "
                                       "reads no such setting (README, Configuration)"),
    ('bind = "x:1"\n[server]\nworkers = 2\n', "line 2: unknown setting 'server': cargohold reads"),
    ("[front]\nworkers = 2\n", "line 1: front: a TOML table, expected one of nginx, none"),
    ("workers = [2]\n", "line 1: workers: a TOML array, expected a whole number"),
    ("workers = 2.0\n", "line 1: workers = 2.0: a TOML float, expected a whole number"),
    ('workers = "two"\n', "line 1: workers = 'two': not a whole number"),
    ("tls = 1\n", "line 1: tls = 1: a TOML integer, expected true or false, 1 or 0, yes or no, on or off"),
    ('tls = "maybe"\n', "line 1: tls = 'maybe': not a boolean (use true or false, 1 or 0, yes or no, on or off)"),
    ("project = 7\n", "line 1: project = 7: a TOML integer, expected a string"),
    ("front = 'apache'\n", "line 1: front = 'apache': not one of nginx, none"),
    ("bundle_max_bytes = '2 PB'\n", "line 1: bundle_max_bytes = '2 PB': not a byte count"),
    ("max_requests_per_address = -1\n", "line 1: max_requests_per_address = -1: must be at least 0"),
    ("seed_dir = 2024-01-01\n", "line 1: seed_dir: a TOML date or time, expected a path"),
    ("workers = \n", "is not valid TOML: Invalid value (at line 1, column 11)"),
])
def test_bad_file_settings_are_refused_naming_file_and_line(tmp_path: Path, text: str, problem: str) -> None:
    file = write(tmp_path / "site.toml", text)
    message = refused({"CARGOHOLD_CONFIG": str(file)})
    assert message.startswith((f"{file}, {problem}", f"{file}: {problem}", f"config file {file} {problem}")), message


def test_a_missing_or_unreadable_file_is_refused(tmp_path: Path) -> None:
    assert refused({"CARGOHOLD_CONFIG": str(tmp_path / "nope.toml")}) == (
        f"config file {tmp_path / 'nope.toml'}: No such file or directory")
    assert refused({}, config_file=tmp_path) == f"config file {tmp_path}: Is a directory"
    (tmp_path / "bin.toml").write_bytes(b"project = '\xff'\n")
    assert refused({}, config_file=tmp_path / "bin.toml") == f"config file {tmp_path / 'bin.toml'} is not UTF-8 text"


def test_an_empty_config_variable_names_no_file() -> None:
    assert Config.from_env({"CARGOHOLD_CONFIG": ""}) == Config()


def test_secrets_only_from_a_private_file(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'project = "p"\nadmin_password = "Long-Enough-Secret-9"\n', 0o640)
    assert refused({}, config_file=file) == (
        f"{file}, line 2: admin_password is a secret, but {file} is readable by group or others (mode 0640): "
        f"chmod 600 {file}, or set CARGOHOLD_ADMIN_PASSWORD in the environment instead")
    file.chmod(0o600)
    assert Config.from_env({}, config_file=file).admin_password == "Long-Enough-Secret-9"
    # Settings that are not secrets may be in a file anyone reads.
    readable = write(tmp_path / "r.toml", 'project = "p"\n', 0o644)
    assert Config.from_env({}, config_file=readable).project == "p"


def test_a_file_anyone_may_write_is_refused(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'project = "p"\n', 0o666)
    assert refused({}, config_file=file) == (
        f"config file {file} is writable by anyone (mode 0666): chmod o-w {file}")


# --- the mechanism: any field plugs in ------------------------------------------------------------------

def test_a_new_field_declares_its_type_and_checks(tmp_path: Path) -> None:
    from web.settings import Bytes, read_file, setting, specs

    def _even(value: int) -> None:
        if value % 2:
            raise ValueError("must be even")

    @dataclass(frozen=True)
    class _Sample:
        level: str = setting("info", choices=("debug", "info"))
        format: Literal["text", "json"] = "text"
        pairs: int = setting(2, validate=_even, minimum=None, maximum=10)
        rate: float = 1.5
        budget: Annotated[int, "bytes"] = 0  # web.settings.Bytes (annotations resolve in this module's globals)
        token: str | None = setting(None, secret=True)

    assert typing.get_args(Bytes) == (int, "bytes")
    sample = specs(_Sample)
    assert sample["level"].from_text("debug") == "debug"
    assert sample["format"].choices == ("text", "json")
    assert sample["pairs"].from_text("-4") == -4
    assert sample["rate"].from_text("0.25") == 0.25 and sample["budget"].from_text("1K") == 1024
    assert sample["token"].secret and "token" not in repr(_Sample(token="x"))
    for name, raw, problem in [("level", "trace", "not one of debug, info"), ("format", "xml", "not one of text, json"),
                               ("pairs", "3", "must be even"), ("pairs", "12", "must be at most 10"),
                               ("rate", "-1", "must be at least 0")]:
        with pytest.raises(ValueError, match=re.escape(problem)):
            sample[name].from_text(raw)
    file = write(tmp_path / "s.toml", 'level = "debug"\nrate = 2\nbudget = "1 MiB"\n', 0o644)
    assert read_file(file, sample) == {"level": "debug", "rate": 2.0, "budget": 1 << 20}


def test_every_config_field_has_a_reader() -> None:
    from web.config import config_specs

    # A field of a type nothing reads (a list, a dict) fails here rather than at an operator's start.
    assert set(config_specs()) == {f.name for f in fields(Config)}


def test_cli_options_are_checked_like_variables() -> None:
    assert refused({}, workers=0) == "--workers 0: must be at least 1"
    assert refused({}, front="apache") == "--front 'apache': not one of nginx, none"


# --- docs that cannot drift --------------------------------------------------------------------------------

def _readme_table() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


@pytest.mark.parametrize("name", [f.name for f in fields(Config)])
def test_every_setting_is_in_the_readme_table(name: str) -> None:
    assert f"`CARGOHOLD_{name.upper()}`" in _readme_table()


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_every_setting_is_in_the_example_file_with_its_default(tmp_path: Path) -> None:
    """docs/cargohold.example.toml: each setting once, as ``#name = <default>`` (or an example and its default).

    Uncommented, the whole file must load: every key a setting, every value valid.
    """
    from web.config import config_specs
    from web.settings import read_file

    text = EXAMPLE.read_text()
    lines = {m.group(1): m.group(2) for m in re.finditer(r"^#([a-z_0-9]+) = (.*)$", text, re.MULTILINE)}
    missing = [f"# <what it is>\n#{f.name} = {_toml_value(f.default)}" for f in fields(Config) if f.name not in lines]
    assert not missing, "add to docs/cargohold.example.toml:\n" + "\n".join(missing)
    for f in fields(Config):
        parsed = tomllib.loads(f"{f.name} = {lines[f.name]}")[f.name]
        if "# default:" in lines[f.name]:  # an example value; its default said in words
            assert f.default is None or isinstance(f.default, Path | str), f.name
            continue
        value = config_specs()[f.name].from_toml(parsed, tmp_path)
        assert value == f.default, f"{f.name}: the example file says {parsed!r}, the default is {f.default!r}"
    uncommented = write(tmp_path / "all.toml", re.sub(r"^#([a-z_0-9]+ = )", r"\1", text, flags=re.MULTILINE))
    assert set(read_file(uncommented, config_specs())) == {f.name for f in fields(Config)}


def test_readme_example_file_loads(tmp_path: Path) -> None:
    from web.config import config_specs
    from web.settings import read_file

    text = (REPO_ROOT / "README.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert example is not None
    file = write(tmp_path / "cargohold.toml", example.group(1))
    assert read_file(file, config_specs())


def test_the_environment_of_this_test_run_is_accepted() -> None:
    # Tests hand their whole environment to the appliances they start.
    Config.from_env(dict(os.environ))
