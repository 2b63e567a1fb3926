from pathlib import Path

import pytest

from mindtrace import Config


def test_defaults_live_under_one_home(tmp_path):
    cfg = Config(env={"MINDTRACE_HOME": str(tmp_path)})
    for key in ("DATA", "CHECKPOINTS", "MLFLOW", "JOBS"):
        assert Path(cfg["DIR_PATHS"][key]).parent == tmp_path
    assert cfg["MLFLOW"]["TRACKING_URI"] == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert cfg.home() == tmp_path


def test_default_home_is_expanded():
    assert Config(env={})["DIR_PATHS"]["HOME"] == str(Path("~/.mindtrace").expanduser())


def test_keys_are_case_insensitive():
    cfg = Config(env={})
    assert cfg["MNIST"]["retries"] == cfg["MNIST"]["RETRIES"]


def test_user_file_then_env_overrides(tmp_path):
    user = tmp_path / "user.ini"
    user.write_text("[MNIST]\nRETRIES = 7\nTIMEOUT_SECONDS = 3\n[EXTRA]\nNAME = mine\n")
    env = {"MINDTRACE_CONFIG": str(user), "MINDTRACE__MNIST__TIMEOUT_SECONDS": "9"}
    cfg = Config(env=env)
    assert cfg["MNIST"].getint("RETRIES") == 7  # from the file
    assert cfg["MNIST"].getfloat("TIMEOUT_SECONDS") == 9.0  # env beats the file
    assert cfg["EXTRA"]["NAME"] == "mine"
    assert cfg["MLFLOW"]["REGISTERED_MODEL"] == "mnist-mlp"  # untouched default


def test_env_override_of_home_moves_derived_paths(tmp_path):
    cfg = Config(env={"MINDTRACE__DIR_PATHS__HOME": str(tmp_path)})
    assert cfg["DIR_PATHS"]["DATA"] == f"{tmp_path}/data"


def test_explicit_path_argument(tmp_path):
    user = tmp_path / "c.ini"
    user.write_text("[MLFLOW]\nEXPERIMENT_NAME = other\n")
    assert Config(user, env={})["MLFLOW"]["EXPERIMENT_NAME"] == "other"


def test_missing_user_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MINDTRACE_CONFIG"):
        Config(env={"MINDTRACE_CONFIG": str(tmp_path / "nope.ini")})


def test_unknown_section_names_what_exists():
    with pytest.raises(KeyError, match=r"no section \[NOPE\]; sections: DIR_PATHS, MLFLOW, MNIST"):
        Config(env={})["NOPE"]


def test_unknown_key_names_what_exists():
    with pytest.raises(KeyError, match=r"no key 'NOPE' in section \[DIR_PATHS\]; keys: HOME, DATA"):
        Config(env={})["DIR_PATHS"]["NOPE"]


def test_typed_getters():
    cfg = Config(env={"MINDTRACE__MNIST__LOCAL_DIR": "~/digits"})
    section = cfg["MNIST"]
    assert section.getlist("SOURCES") == ["mirrors", "pypi", "local"]
    assert len(section.getlist("MIRRORS")) == 3
    assert section.getpath("LOCAL_DIR") == Path("~/digits").expanduser()
    assert Config(env={})["MNIST"].getpath("LOCAL_DIR") is None


def test_as_dict_has_every_section():
    sections = {"DIR_PATHS", "MLFLOW", "MNIST", "PROMOTION", "SERVICE", "MONITORING", "ROLLOUT"}
    assert set(Config(env={}).as_dict()) == sections
