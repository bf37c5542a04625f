"""PRM protocol pieces: score validation, the registry and `load_prm` from names, mappings and files."""

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from prpo.prm import PRM_REGISTRY, ArithmeticPRM, PRMError, ProcessRewardModel, load_prm, register_prm, validate_scores
from prpo.prm.base import build_config, read_config_file

SEGMENTS = [["a", "b"], ["c"]]


def test_validate_scores_accepts_and_converts():
    assert validate_scores([[0, 1.0], [0.25]], SEGMENTS) == [[0.0, 1.0], [0.25]]
    assert validate_scores([], []) == []


@pytest.mark.parametrize(
    "scores, message",
    [
        ([[0.5, 0.5]], "scores for 1 responses, expected 2"),
        ([[0.5], [0.5]], "1 scores for response 0, which has 2 segments"),
        ([[0.5, float("nan")], [0.5]], "response 0, segment 1 is nan"),
        ([[0.5, 0.5], [math.inf]], "response 1, segment 0 is inf"),
        ([[0.5, 1.5], [0.5]], "response 0, segment 1 is 1.5"),
        ([[0.5, -0.1], [0.5]], "response 0, segment 1 is -0.1"),
        ([[0.5, None], [0.5]], "response 0, segment 1 is None"),
        ([[0.5, True], [0.5]], "response 0, segment 1 is True"),
        ("0.5", "expected a list"),
    ],
)
def test_validate_scores_names_the_bad_value(scores, message):
    with pytest.raises(PRMError, match=message.replace("(", r"\(")):
        validate_scores(scores, SEGMENTS)


def test_score_rejects_mismatched_inputs():
    prm = ArithmeticPRM()
    with pytest.raises(PRMError, match="2 problems for 1 responses"):
        prm.score(["p", "q"], [["a"]])
    with pytest.raises(PRMError, match="segments of response 0 must be a list"):
        prm.score(["p"], ["a string"])


def test_load_by_name_mapping_and_files(tmp_path):
    assert {"arithmetic", "step_tag", "shepherd", "remote", "cached", "bench_family"} <= set(PRM_REGISTRY.names())
    prm = load_prm("arithmetic")
    assert isinstance(prm, ProcessRewardModel) and isinstance(prm, ArithmeticPRM)

    yaml_file = tmp_path / "prm.yaml"
    yaml_file.write_text("type: arithmetic\nright: 0.8\nnoise: 0.1\nseed: 3\n")
    assert load_prm(str(yaml_file)).config == ArithmeticPRM.Config(right=0.8, noise=0.1, seed=3)
    json_file = tmp_path / "prm.json"
    json_file.write_text(json.dumps({"type": "cached", "prm": {"type": "arithmetic"}, "max_entries": 10}))
    assert load_prm(json_file).prm_id == load_prm("arithmetic").prm_id  # a cache does not change scores


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(PRMError, match="unknown PRM type 'magic'; known: arithmetic, bench_family, cached, remote"):
        load_prm({"type": "magic"})
    with pytest.raises(PRMError, match="unknown PRM type None"):
        load_prm({"model": "x"})
    with pytest.raises(PRMError, match="does not exist"):
        load_prm(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: arithmetic\nright: [0.8\n")
    with pytest.raises(PRMError, match="bad.yaml is not valid YAML"):
        load_prm(str(bad))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(PRMError, match="must hold a mapping"):
        load_prm(str(listed))
    field = tmp_path / "field.yaml"
    field.write_text("type: step_tag\nmodel: some/model\nbatch_tokens: 10\n")
    with pytest.raises(PRMError, match=r"field.yaml \(type 'step_tag'\): unknown field 'batch_tokens'"):
        load_prm(str(field))


def test_prm_package_imports_no_layer_above_it():
    """`prpo.prm` knows every PRM type without importing `prpo.bench`; naming ``bench_family`` loads the
    benchmark's PRM module alone (not its runner, nor the trainer)."""
    code = ("import sys, prpo.prm; print([m for m in sys.modules if m.startswith('prpo.bench')]); "
            "print('bench_family' in prpo.prm.PRM_REGISTRY.names()); prpo.prm.PRM_REGISTRY.lookup('bench_family'); "
            "print(sorted(m for m in sys.modules if m.startswith(('prpo.bench', 'prpo.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.splitlines() == ["[]", "True", "['prpo.bench', 'prpo.bench.family', 'prpo.bench.prm']"]

def test_the_core_loads_without_transformers_or_trl():
    """What another trainer needs (advantages, segmentation, filters, registries, the PRM protocol and the
    HTTP client) imports with torch, httpx and PyYAML alone; an adapter loads its libraries when named."""
    core = "prpo.advantages prpo.segmentation prpo.filters prpo.registry prpo.prm prpo.prm.base prpo.prm.remote"
    heavy = ["transformers", "trl", "accelerate", "datasets", "prpo.tasks", "prpo.training.trainer"]
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {core.split()!r}]; "
            f"print([m for m in {heavy!r} if m in sys.modules]); "
            "import prpo.prm; prpo.prm.load_prm({'type': 'remote', 'url': 'http://127.0.0.1:1'}); "
            f"print([m for m in {heavy!r} if m in sys.modules]); "
            "prpo.prm.PRM_REGISTRY.lookup('step_tag'); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split("\n")[:3] == ["[]", "[]", "True"]


def test_a_lazy_builtin_name_cannot_be_taken_before_it_loads():
    code = ("import prpo.prm.base as b\n"
            "class P:\n    Config = __import__('dataclasses').make_dataclass('C', [])\n"
            "try:\n    b.register_prm('shepherd')(P)\nexcept ValueError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "PRM type 'shepherd' is already registered"


def test_a_second_prm_type_of_a_taken_name_is_refused():
    class Other:
        Config = ArithmeticPRM.Config

        def __init__(self, config):
            self.config = config

    with pytest.raises(ValueError, match="PRM type 'arithmetic' is already registered"):
        register_prm("arithmetic")(Other)
    assert PRM_REGISTRY["arithmetic"].fn is ArithmeticPRM and PRM_REGISTRY["arithmetic"].Config is ArithmeticPRM.Config
    with pytest.raises(TypeError, match="needs a dataclass attribute `Config`"):
        register_prm("no_config")(type("NoConfig", (), {}))
    assert "no_config" not in PRM_REGISTRY


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs" / "prm").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    """Every shipped PRM config names a known type and only known, well-typed fields (no model is loaded)."""
    data = dict(read_config_file(path))
    while True:
        kind = data.pop("type")
        config = build_config(PRM_REGISTRY.lookup(kind).Config, data, where=str(path))
        if kind != "cached":
            break
        data = dict(config.prm)
