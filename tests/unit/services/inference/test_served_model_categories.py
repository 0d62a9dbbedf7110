"""A served model's per-item categories and per-category rows, from the forms an item table gives them in."""

from __future__ import annotations

import numpy as np

from services.inference.served_model import _code_categories


def test_category_strings_are_split_and_each_category_lists_its_rows_in_order():
    values = np.array(["drama|comedy", "", "comedy", "drama|comedy", "news"], dtype=np.str_)
    per_row, rows = _code_categories(values)
    assert per_row == [("drama", "comedy"), (), ("comedy",), ("drama", "comedy"), ("news",)]
    assert {c: r.tolist() for c, r in rows.items()} == {"drama": [0, 3], "comedy": [0, 2, 3], "news": [4]}


def test_tuples_and_unhashable_lists_give_the_same_result_as_strings():
    as_strings = _code_categories(["a|b", "", "b"])
    for values in ([("a", "b"), (), ("b",)], [["a", "b"], [], ["b"]], [["a", "b"], None, ("b",)]):
        per_row, rows = _code_categories(values)
        assert per_row == as_strings[0]
        assert {c: r.tolist() for c, r in rows.items()} == {c: r.tolist() for c, r in as_strings[1].items()}


def test_no_categories_at_all():
    per_row, rows = _code_categories([()] * 4)
    assert per_row == [()] * 4 and rows == {}
