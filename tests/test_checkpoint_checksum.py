"""The SHA-256 manifest catches a silent same-size edit that still parses.

A flipped byte in compressed array data or a truncated JSON file fails to decode anyway;
the checksum is what catches an edit that leaves every file well-formed and the same size
(found by tests/mutation_check.py: disabling the checksum passed tests/test_checkpoint.py).
"""

import jax.numpy as jnp
import pytest

from jaxcrl import checkpoint as ckpt


def test_same_size_valid_json_edit_of_the_config_is_detected(tmp_path):
    path = tmp_path / "c"
    ckpt.save(path, {"w": jnp.ones(3)}, config={"lr": 0.125}, kind="crl")
    assert ckpt.load(path).config == {"lr": 0.125}
    cfg = path / "config.json"
    text = cfg.read_text()
    assert text.count("0.125") == 1
    cfg.write_text(text.replace("0.125", "0.875"))  # same size, still valid JSON
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load(path)
