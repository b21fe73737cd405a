"""Path templates and the {fold} patterns (core/paths.py): one spelling, read without Snakemake."""

import re

import pytest
from imageclf.core import paths


@pytest.mark.parametrize("k", [0, 3, 12])
def test_a_folds_part_is_what_the_fold_wildcard_matches(k):
    assert paths.fold_part(None) == ""
    assert re.fullmatch(paths.fold_pattern(5), paths.fold_part(k))
    assert re.fullmatch(paths.fold_pattern(5, full_fit=True), paths.fold_part(k))


@pytest.mark.parametrize("folds, full_fit, matches, refuses", [
    (0, False, [""], ["/fold0", "/full"]),
    (5, False, ["/fold0", "/fold4", "/fold12"], ["", "/full", "fold0", "/fold", "/fold0/x"]),
    (5, True, ["/fold0", "/full"], ["", "/fullx", "/fold"]),
])
def test_the_fold_wildcard_matches_exactly_the_runs_folders(folds, full_fit, matches, refuses):
    pattern = paths.fold_pattern(folds, full_fit)
    assert all(re.fullmatch(pattern, part) for part in matches)
    assert not any(re.fullmatch(pattern, part) for part in refuses)


def test_the_cache_fold_covers_every_run_folder_and_no_other():
    for part in ["", paths.fold_part(0), paths.fold_part(7), paths.FULL_FIT]:
        assert re.fullmatch(paths.CACHE_FOLD, part)
    assert not re.fullmatch(paths.CACHE_FOLD, "/fold")


def test_a_model_file_is_in_its_runs_folder():
    assert paths.model_file("full", 2, None, "model") == "results/train/full/seed2/model.pt"
    assert paths.model_file("no_mlp", 0, 3, "selection") == "results/train/no_mlp/seed0/fold3/selection.json"
    assert paths.RUN.format(variant="v", seed=1, fold=paths.FULL_FIT) == "results/train/v/seed1/full"


def test_a_folds_index_is_its_own_but_test_is_shared():
    assert paths.index_file("train", paths.fold_part(2)) == "results/index/fold2/train.csv"
    assert paths.index_file("val") == "results/index/val.csv"
    assert paths.index_file("test", paths.fold_part(2)) == "results/index/test.csv"
