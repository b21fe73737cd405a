"""The synthetic course-sized data set (speed checks): the index accepts it as a real one."""

from conftest import index_dataset

from benchmarks import synthetic


def test_synthetic_data_set_is_in_the_course_layout(tmp_path):
    root = synthetic.make_dataset(tmp_path / "data", classes=12, train=30, val=12, test=5,
                                  width=50, height=40, workers=2)
    frames = index_dataset(root, tmp_path / "index")
    # 12 classes whose folder names sort as strings differently from numbers ("10" < "2")
    assert frames["classes"] == [str(i) for i in range(12)]
    assert len(frames["train"]) == 30 and len(frames["val"]) == 12 and len(frames["test"]) == 5
    assert frames["train"]["label"].value_counts().to_dict() == {str(i): 3 if i < 6 else 2 for i in range(12)}
    assert set(zip(frames["train"]["width"], frames["train"]["height"])) == {(50, 40)}
    # every picture differs, so no split shares an image with another
    assert frames["train"]["sha256"].is_unique
    assert (tmp_path / "index" / "leaks.csv").read_text().count("\n") == 1
