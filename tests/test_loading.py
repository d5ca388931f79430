"""jaxbp.loading: the one loader of a user's ``module:function`` / ``file.py:function``."""

import pytest

from jaxbp import loading


@pytest.fixture
def user_file(tmp_path):
    folder = tmp_path / "user code"  # a space in the folder, as real paths have
    folder.mkdir()
    (folder / "helper_mod_for_loading.py").write_text("SCALE = 3\n")
    path = folder / "my_layer_for_loading.py"
    path.write_text("from helper_mod_for_loading import SCALE\n\ndef triple(x):\n    return SCALE * x\n\nVALUE = 1\n")
    return path


def test_loads_a_file_path_with_its_sibling_imports(user_file):
    fn = loading.load_function(f"{user_file}:triple")
    assert fn(2) == 6


def test_loads_a_dotted_module():
    assert loading.load_function("jaxbp.loading:split_spec")("a.b:c") == ("a.b", "c")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "not of the form MODULE:FUNCTION"),
        ("json:", "not of the form"),
        ("json:1bad", "not a dotted Python name"),
        ("not_a_module_xyz:f", "cannot import module 'not_a_module_xyz'"),
        ("jaxbp.loading:missing", "has no attribute 'missing'"),
        ("{file}:VALUE", "is not callable"),
        ("{folder}/absent.py:f", "no such file"),
        ("bad-name.module:f", "neither a dotted module name nor a path"),
    ],
)
def test_errors_are_one_line_and_name_the_spec(user_file, spec, message):
    spec = spec.format(file=user_file, folder=user_file.parent)
    with pytest.raises(loading.LoadError, match=message) as info:
        loading.load_function(spec)
    assert "\n" not in str(info.value)
    assert repr(spec) in str(info.value)


def test_an_import_error_inside_the_file_is_reported(tmp_path):
    path = tmp_path / "broken_for_loading.py"
    path.write_text("raise RuntimeError('boom\\nsecond line')\n")
    with pytest.raises(loading.LoadError, match="raised RuntimeError: boom$"):
        loading.load_function(f"{path}:f")
