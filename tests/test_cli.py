import json

from axlab.cli import main
from axlab.core.testing import save_tiny


def _csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "\n".join(f"this film is {'good' if i % 2 else 'bad'} {i},{i % 2}" for i in range(60)))
    return str(p)


def test_eval_json(tmp_path, capsys):
    folder = save_tiny(tmp_path / "m")
    assert main(["eval", str(folder), "--dataset", _csv(tmp_path), "--json", "--no-latency"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["accuracy"] <= 1 and out["size_bytes"] > 0 and out["n"] == 9


def test_bad_input_exit_code_and_hint(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "x" / "y" / "z"), "--json"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "how to fix:" in err
