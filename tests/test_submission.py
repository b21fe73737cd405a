"""The leaderboard file: exactly the test images, sorted, labels as folder names."""

import zipfile

import pandas as pd
import pytest

from imageclf import submission
from imageclf.submission import SubmissionError

CLASSES = [str(i) for i in range(12)]


def sample_index():
    return pd.DataFrame({"image_name": ["b", "a", "c10", "c2"]})


def preds(names, labels):
    return pd.DataFrame({"image_name": names, "pred_label": labels})


def test_sorted_by_name_with_folder_labels():
    table = submission.build_submission(preds(["c2", "a", "c10", "b"], ["10", "2", "11", "0"]), sample_index(), CLASSES)
    assert list(table.columns) == ["image_name", "pred_label"]
    assert table["image_name"].tolist() == ["a", "b", "c10", "c2"]
    assert table["pred_label"].tolist() == ["2", "0", "11", "10"]


@pytest.mark.parametrize(
    "names, labels, message",
    [
        (["a", "b", "c10"], ["1", "1", "1"], "1 test image(s) without a prediction: ['c2']"),
        (["a", "b", "c10", "c2", "zz"], ["1"] * 5, "not in the test index: ['zz']"),
        (["a", "b", "c10", "c2", "a"], ["1"] * 5, "predicted more than once: ['a']"),
        (["a", "b", "c10", "c2"], ["1", "1", "1", "99"], "not classes: ['99']"),
    ],
)
def test_mismatch_is_an_error(names, labels, message):
    with pytest.raises(SubmissionError) as error:
        submission.build_submission(preds(names, labels), sample_index(), CLASSES)
    assert message in str(error.value)


def test_files_written_only_when_valid(tmp_path):
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    sample_index().assign(path="x", label="").to_csv(index_dir / "test.csv", index=False)
    pd.DataFrame({"index": range(12), "name": CLASSES}).to_csv(index_dir / "classes.csv", index=False)
    good = tmp_path / "test_preds.csv"
    preds(["c2", "a", "c10", "b"], ["10", "2", "11", "0"]).to_csv(good, index=False)
    out_csv, out_zip = tmp_path / "submission.csv", tmp_path / "submission.zip"
    submission.write_submission(good, index_dir, out_csv, out_zip)
    assert out_csv.read_text().splitlines() == ["image_name,pred_label", "a,2", "b,0", "c10,11", "c2,10"]
    with zipfile.ZipFile(out_zip) as archive:
        assert archive.namelist() == ["prediction.csv"]
        assert archive.read("prediction.csv").decode() == out_csv.read_text()
    short = tmp_path / "short.csv"
    preds(["a"], ["1"]).to_csv(short, index=False)
    before = out_csv.read_text()
    with pytest.raises(SubmissionError, match="3 test image"):
        submission.write_submission(short, index_dir, out_csv, out_zip)
    assert out_csv.read_text() == before  # the finished submission is untouched
