"""The "I don't know" answer set shipped with the package (idkdpo and idknll use it): its content, that it is
package data, a user's file, bad files rejected at configuration, and the seeded per-epoch draws."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from sau_trainer import SAUConfig
from sau_trainer.data.idk import default_idk_path, idk_choices, load_idk_answers

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- the idk set
def test_the_package_ships_100_distinct_short_answers():
    answers = load_idk_answers()
    assert len(answers) == 100 and len(set(answers)) == 100
    assert all(0 < len(a.split()) <= 12 for a in answers)
    assert Path(default_idk_path()).parent == ROOT / "sau_trainer" / "data"


def test_the_answer_file_is_package_data(tmp_path):
    """A wheel built from the tree contains idk.jsonl (so `pip install sau-trainer` has it)."""
    src = tmp_path / "src"  # a copy of the tree: building in place would leave build/ in the checkout
    shutil.copytree(ROOT / "sau_trainer", src / "sau_trainer", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, cwd=src, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("sau_trainer/data/idk.jsonl").decode() == Path(default_idk_path()).read_text()


def test_a_users_file_one_answer_per_line(tmp_path):
    path = tmp_path / "idk.jsonl"
    path.write_text("I'm not certain about that.\n\n  No idea.  \nI'm not sure I can help with that.")  # no final newline
    assert load_idk_answers(path) == ["I'm not certain about that.", "No idea.", "I'm not sure I can help with that."]
    assert SAUConfig(output_dir=str(tmp_path), report_to=[], objective="idkdpo", idk_path=str(path)).idk_path


@pytest.mark.parametrize("content,match", [(None, "does not exist"), ("\n \n", "has no answer"),
                                           (b"\xff\xfe\x00", "not UTF-8")])
def test_a_bad_idk_file_fails_at_configuration(tmp_path, content, match):
    path = tmp_path / "idk.jsonl"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        SAUConfig(output_dir=str(tmp_path), report_to=[], objective="idkdpo", idk_path=str(path))


def test_idk_choices_are_seeded_per_epoch_or_fixed():
    a = idk_choices(100, 50, 3, seed=0, fixed=False)
    assert a.shape == (3, 50) and int(a.min()) >= 0 and int(a.max()) < 100
    assert torch.equal(a, idk_choices(100, 50, 3, seed=0, fixed=False))  # same on every process and on resume
    assert not torch.equal(a[0], a[1])  # a fresh draw each epoch, as open-unlearning's per-fetch draw
    assert not torch.equal(a, idk_choices(100, 50, 3, seed=1, fixed=False))
    f = idk_choices(100, 50, 3, seed=0, fixed=True)
    assert torch.equal(f[0], f[2]) and torch.equal(f[0], a[0])
