"""The leaderboard file: exactly the test images, sorted, labels as folder names."""

import zipfile

import pandas as pd
import pytest
from imageclf.core import tables
from imageclf.evaluation import submission
from imageclf.evaluation.submission import SubmissionError

CLASSES = [str(i) for i in range(12)]


def sample_index():
    return pd.DataFrame({"image_name": ["b", "a", "c10", "c2"]})


def preds(names, labels):
    return pd.DataFrame({"image_name": names, "label": "", "pred_label": labels, "correct": None})


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
    test_index, classes = tmp_path / "test.csv", tmp_path / "classes.csv"
    tables.write_index(test_index, sample_index().assign(path="x", label="", width=1, height=1, sha256="0"))
    tables.write_classes(classes, CLASSES)
    good = tmp_path / "test_preds.csv"
    tables.write_predictions(good, preds(["c2", "a", "c10", "b"], ["10", "2", "11", "0"]))
    out_csv, out_zip = tmp_path / "submission.csv", tmp_path / "submission.zip"
    submission.write_submission(good, test_index, classes, out_csv, out_zip)
    assert out_csv.read_text().splitlines() == ["image_name,pred_label", "a,2", "b,0", "c10,11", "c2,10"]
    with zipfile.ZipFile(out_zip) as archive:
        assert archive.namelist() == ["prediction.csv"]
        assert archive.read("prediction.csv").decode() == out_csv.read_text()
    short = tmp_path / "short.csv"
    tables.write_predictions(short, preds(["a"], ["1"]))
    before = out_csv.read_text()
    with pytest.raises(SubmissionError, match="3 test image"):
        submission.write_submission(short, test_index, classes, out_csv, out_zip)
    assert out_csv.read_text() == before  # the finished submission is untouched
