import pytest

from mcrecall.config import ConfigError, load_config


def test_defaults_then_file_then_environment(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\ndim = 16\n[index]\nmetric = "l2"\nbackend = "faiss"\n')
    cfg = load_config(f, environ={"MCRECALL_TRAIN_DIM": "24", "MCRECALL_KAFKA_BOOTSTRAP_SERVERS": "h:1"})
    assert cfg.train.dim == 24 and cfg.index.metric == "L2" and cfg.index.backend == "faiss"
    assert cfg.kafka.bootstrap_servers == "h:1"
    assert load_config(environ={}).train.dim == 32


@pytest.mark.parametrize("text,msg", [
    ("[trian]\ndim=3\n", "unknown config section"),
    ("[train]\ndims=3\n", "unknown config key"),
    ("[train]\ndim='x'\n", "expected an integer"),
    ("[index]\nmetric='hamming'\n", "metric must be"),
    ("[train\n", "not valid TOML"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, msg):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(f, environ={})


def test_bad_environment_override():
    with pytest.raises(ConfigError, match="MCRECALL_<SECTION>_<KEY>"):
        load_config(environ={"MCRECALL_NOPE_X": "1"})
    with pytest.raises(ConfigError, match="boolean"):
        load_config(environ={"MCRECALL_SERVE_FOLD_IN": "maybe"})


def test_test_harness_variables_are_not_config():
    cfg = load_config(environ={"MCRECALL_TEST_KAFKA_IMAGE": "x", "MCRECALL_TEST_KAFKA": "docker"})
    assert cfg.kafka == load_config(environ={}).kafka
