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


def test_a_file_imported_as_a_sibling_loads_by_spec_too(tmp_path):
    (tmp_path / "sibling_for_loading.py").write_text("def scale():\n    return 3\n")
    (tmp_path / "main_for_loading.py").write_text("from sibling_for_loading import scale\n")
    assert loading.load_function(f"{tmp_path}/main_for_loading.py:scale")() == 3  # imports the sibling
    assert loading.load_function(f"{tmp_path}/sibling_for_loading.py:scale")() == 3  # the same file: allowed


@pytest.mark.parametrize("name", ["json", "numpy"])
def test_a_file_named_like_another_module_is_refused_before_it_runs(tmp_path, name):
    import sys

    before = sys.modules.get(name)
    path = tmp_path / f"{name}.py"
    path.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    with pytest.raises(loading.LoadError, match=f"would replace the module '{name}'"):
        loading.load_function(f"{path}:f")
    assert not (tmp_path / "ran").exists() and sys.modules.get(name) is before


@pytest.mark.parametrize("spec", ["os:getcwd", "os.path:join", "builtins:exec"])
def test_a_standard_library_spec_is_refused(spec):
    with pytest.raises(loading.LoadError, match="is a module of Python's standard library"):
        loading.load_function(spec)


def test_user_code_gives_a_clean_argv_and_refuses_sys_exit():
    import sys

    argv = list(sys.argv)
    with pytest.raises(loading.LoadError, match=r"^'m:f' called sys.exit\(3\) while calling it;"):
        with loading.user_code("m:f", "calling it"):
            assert sys.argv == ["m:f"]
            sys.exit(3)
    assert sys.argv == argv
    with pytest.raises(loading.UserCodeInterrupted, match=r"^interrupted while importing 'm' \('m:f'\)$"):
        with loading.user_code("m:f", "importing 'm'"):
            raise KeyboardInterrupt


def test_first_line_of_a_callback_error_is_the_exception_not_the_traceback_header():
    err = ValueError("INTERNAL: CpuCallback error: Traceback (most recent call last):\n  File x\nRuntimeError: boom")
    assert loading.first_line(err) == "INTERNAL: CpuCallback error: RuntimeError: boom"


def test_anchored_spec_makes_a_file_absolute_and_leaves_modules_and_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert loading.anchored_spec("models/mine.py:make") == f"{tmp_path}/models/mine.py:make"
    assert loading.anchored_spec("../mine.py:Model.build") == f"{tmp_path.parent}/mine.py:Model.build"
    assert loading.anchored_spec("/abs/mine.py:make") == "/abs/mine.py:make"
    for unchanged in ("mypackage.models:make", "cnn", "mine.py:"):
        assert loading.anchored_spec(unchanged) == unchanged
