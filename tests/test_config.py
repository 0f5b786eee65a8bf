"""Command-line overrides of frozen configs (``--set a.b=value``) and the CRL config variants."""

import argparse
import dataclasses

import jax
import numpy as np
import pytest

from jaxcrl.config import add_config_flags, apply_overrides, config_from_args, override
from jaxcrl.crl.synthetic import GENERALIZATION_ROWS, SyntheticConfig, variant
from jaxcrl.sae import SAEConfig


def test_nested_fields_parse_by_their_annotated_type():
    cfg = apply_overrides(SyntheticConfig(), [
        "data.scm.latent_dim=3", "data.scm.graph.edge_prob=0.25", "crl.lr=3e-3",
        "crl.hidden=[32, 16]", "methods=latent_scm,ivae", "data.mixing.obs_dim=null",
        "baseline_restarts=None", "data.intervention.soft_random_sign=false"])
    assert cfg.data.scm.latent_dim == 3 and isinstance(cfg.data.scm.latent_dim, int)
    assert cfg.data.scm.graph.edge_prob == 0.25
    assert cfg.crl.lr == 0.003 and cfg.crl.hidden == (32, 16)
    assert cfg.methods == ("latent_scm", "ivae")
    assert cfg.data.mixing.obs_dim is None and cfg.baseline_restarts is None
    assert cfg.data.intervention.soft_random_sign is False
    assert SyntheticConfig().data.scm.latent_dim == 5  # frozen: the default is untouched
    # strings are taken as given; JSON lists work for tuples of strings too
    sae = apply_overrides(SAEConfig(), ["hook_name=blocks.0.hook_resid_post", "k=8"])
    assert sae.hook_name == "blocks.0.hook_resid_post" and sae.k == 8
    assert override(SyntheticConfig(), 'methods=["beta_vae"]').methods == ("beta_vae",)


@pytest.mark.parametrize("assignment, match", [
    ("crl.stepz=3", r"CRLConfig has no field 'stepz'.*fields: \["),
    ("crl.steps=1.5", "crl.steps must be int"),
    ("crl.steps=__import__('os')", "crl.steps must be int"),
    ("seeds=true", "seeds must be int"),
    ("data.scm=3", "set its fields"),
    ("crl.steps", "must look like"),
    ("methods=magic", r"methods must be a non-empty subset"),  # the config's own validation
    ("crl.steps=0", "steps must be >= 1"),
    ("seeds.x=1", "not a config dataclass"),
])
def test_bad_overrides_are_clear_errors(assignment, match):
    with pytest.raises(ValueError, match=match):
        override(SyntheticConfig(), assignment)


def test_alias_flags_and_set_go_through_the_same_parser():
    aliases = {"--steps": "crl.steps", "--restarts": ("crl.restarts", "baseline_restarts")}
    p = argparse.ArgumentParser()
    add_config_flags(p, aliases)
    args = p.parse_args(["--steps", "50", "--restarts", "3", "--set", "seeds=2",
                         "--set", "crl.steps=70"])
    cfg = config_from_args(SyntheticConfig(), args, aliases)
    assert cfg.crl.steps == 70  # --set comes after the short flags
    assert cfg.crl.restarts == 3 and cfg.baseline_restarts == 3 and cfg.seeds == 2
    assert cfg.method_config("ivae").restarts == 3


def test_generalization_rows_are_config_variants_changing_one_setting():
    base = SyntheticConfig(seeds=1)
    assert variant(base, "default") == base
    for name in GENERALIZATION_ROWS:
        cfg = variant(base, name)
        changed = [f.name for f in dataclasses.fields(base)
                   if getattr(cfg, f.name) != getattr(base, f.name)]
        if name.startswith("contrastive"):  # another method on a harder setting
            assert {"methods", "crl"} <= set(changed) <= {"methods", "crl", "data",
                                                          "targets"}, (name, changed)
            continue
        if name.endswith(", four restarts by acyclicity, polished"):  # its row's data, the
            plain = variant(base, name.split(", four")[0])  # fit's restarts and graph changed
            assert cfg.data == plain.data and cfg.targets == plain.targets, name
            assert (cfg.crl.restarts, cfg.crl.restart_choice, cfg.crl.polish,
                    cfg.crl.graph_min_r2, cfg.crl.edge_threshold) == (
                        4, "acyclicity", True, 0.05, 0.1), name
            assert cfg.method_config("latent_scm").polish, name
            assert not cfg.method_config("ivae").polish, name
            continue
        if name.endswith("flow prior"):  # the same data as its row, the prior changed
            assert "scm_prior" in changed and set(changed) <= {"data", "scm_prior", "crl"}, name
            if "crl" in changed:  # only the flow prior's warm start
                assert dataclasses.replace(cfg.crl, warm_steps=0) == base.crl, name
            assert cfg.method_config("latent_scm").scm == "flow"
            assert cfg.method_config("ivae").scm != "flow"
            continue
        assert len(changed) == (0 if name == "default" else 1), (name, changed)
    d3 = variant(base, "d=3")
    assert d3.method_config("latent_scm").latent_dim == 3
    assert d3.method_config("latent_scm").n_envs == 4
    inj = variant(base, "D=20 injective mixing").data.mixing
    assert (inj.kind, inj.obs_dim) == ("injective", 20)
    soft = variant(base, "soft interventions").method_config("latent_scm")
    assert soft.intervention == "soft"
    assert variant(base, "nonlinear SCM").method_config("ivae").scm == "nonlinear"
    assert variant(base, "unknown targets").method_config("latent_scm").targets == "unknown"
    with pytest.raises(ValueError, match="unknown row"):
        variant(base, "d=99")


def test_polished_default_row_reaches_latent_scm_only_and_baselines_still_build():
    cfg = dataclasses.replace(variant(SyntheticConfig(seeds=1),
                                      "default, four restarts by acyclicity, polished"),
                              baseline_restarts=None)
    own = cfg.method_config("latent_scm")
    assert (own.restarts, own.restart_choice, own.polish) == (4, "acyclicity", True)
    assert (own.graph_min_r2, own.edge_threshold) == (0.05, 0.1)
    for method in ("beta_vae", "ivae"):  # would be invalid configs with either setting
        base = cfg.method_config(method)
        assert (base.restarts, base.restart_choice, base.polish) == (4, "loss", False)
    vae = cfg.method_config("latent_scm_vae")  # a latent SCM: the choice reaches it
    assert (vae.restart_choice, vae.polish) == ("acyclicity", False)


def test_two_interventions_per_node_row_targets_every_latent_twice():
    from jaxcrl.scm import make_dataset

    cfg = variant(SyntheticConfig(seeds=1), "soft interventions, two per node")
    assert cfg.method_config("latent_scm").n_envs == 11
    data = dataclasses.replace(cfg.data, n_per_env=10)
    ds = make_dataset(jax.random.key(0), data)
    t = np.asarray(ds.targets)
    assert t.shape == (11, 5) and not t[0].any()
    assert (t[1:].sum(1) == 1).all() and (t[1:].sum(0) == 2).all()
