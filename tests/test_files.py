"""One-line errors of the shared document readers, through the commands that use them."""
import pytest

from ttt.base.files import read_json, read_yaml, write_csv
from ttt.launch.launcher import read_launcher
from ttt.panel.ratings import PanelError, read_ratings


def test_missing_and_malformed_documents_name_the_file(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [1, 2\n")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": 1,}')
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML \("):
        read_yaml(bad_yaml, "thing")
    with pytest.raises(ValueError, match=r"nope\.yaml: thing not found$"):
        read_yaml(tmp_path / "nope.yaml", "thing")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON \(.*line 1\)$"):
        read_json(bad_json, "thing")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PanelError, match=r"bin\.json: not valid JSON \(not UTF-8 text\)"):
        read_ratings(binary)
    # The launcher used to let a raw yaml error escape; now it is the same one-line error.
    with pytest.raises(ValueError, match=r"bad\.yaml: not valid YAML"):
        read_launcher(bad_yaml)
    listing = tmp_path / "list.yaml"
    listing.write_text("- executor\n")
    with pytest.raises(ValueError, match="expected a mapping of launcher settings"):
        read_launcher(listing)


def test_write_csv_is_atomic_and_takes_every_key(tmp_path):
    path = tmp_path / "deep" / "t.csv"
    write_csv(path, [{"a": 1}, {"b": 2, "a": 3}])
    assert path.read_text().splitlines() == ["a,b", "1,", "3,2"]
    assert [p.name for p in path.parent.iterdir()] == ["t.csv"]
