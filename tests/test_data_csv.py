"""CSV tables as spreadsheet programs and hand-written files make them: byte-order marks,
other separators, unquoted separators inside captions, other encodings."""

import pytest
from test_data_sources import make_table

from alignjax import data
from alignjax.data import csv_source


def _captions(src):
    return [src._captions[i] for i in range(len(src))]


def test_byte_order_mark_is_dropped(tmp_path):
    path, rows = make_table(tmp_path, n=3)
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"))  # Excel: BOM and CRLF
    src = data.get_source(f"csv:{path}", "train")
    assert _captions(src) == [r["title"] for r in rows]
    assert src.image_path(0).endswith("img/0.jpg")


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_other_separators_are_detected(tmp_path, sep):
    path, _ = make_table(tmp_path, n=3, sep=sep, captions=["a, b", "c", "d, e, f"])
    if path.endswith(".tsv"):  # sniffed from the header, not the file name
        path = path[: -len(".tsv")] + ".txt"
        (tmp_path / "data.tsv").rename(path)
    src = data.get_source(f"csv:{path}", "train")
    assert _captions(src) == ["a, b", "c", "d, e, f"]


def test_sep_line_and_sep_parameter(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("sep=;\nfilepath;title\nx.jpg;a, b\n")
    assert csv_source.read_table(str(table), "csv") == [{"filepath": "x.jpg", "title": "a, b"}]
    table.write_text("filepath;title,with comma\nx.jpg;a, b\n")  # the sniffer would say ','
    rows = csv_source.read_table(str(table), "csv", sep="semicolon")
    assert rows == [{"filepath": "x.jpg", "title,with comma": "a, b"}]
    src = data.get_source(f"csv:{table}?sep=semicolon&caption_key=title,with comma", "train")
    assert _captions(src) == ["a, b"]


def test_unquoted_separator_in_a_caption_names_the_line(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text(
        'filepath,title\nx.jpg,"quoted, fine"\ny.jpg,a trailing comma,\nz.jpg,red, round\n'
    )
    with pytest.raises(ValueError, match=r"t\.csv:4: 3 fields, but the header has 2 .*Quote"):
        data.get_source(f"csv:{table}", "train")
    table.write_text('filepath,title\nx.jpg,"quoted, fine"\ny.jpg,a trailing comma,\n')
    assert _captions(data.get_source(f"csv:{table}", "train")) == [
        "quoted, fine",
        "a trailing comma",
    ]


def test_not_utf8_says_how_to_save(tmp_path):
    table = tmp_path / "t.csv"
    table.write_bytes("filepath,title\nx.jpg,café\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"t\.csv: not UTF-8 text .*save the table as UTF-8"):
        data.get_source(f"csv:{table}", "train")


def test_a_quote_that_never_ends_is_an_error_not_lost_rows(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text('filepath,title\nx.jpg,"5" screen\ny.jpg,"hi\na.jpg,b\nc.jpg,d\ne.jpg,f\n')
    with pytest.raises(ValueError, match=r"t\.csv:3: a quoted value runs to line 6 .*stray quote"):
        data.get_source(f"csv:{table}", "train")
    table.write_text('filepath,title\nx.jpg,"a caption\nover two lines, legitimately"\n')
    assert _captions(data.get_source(f"csv:{table}", "train")) == [
        "a caption\nover two lines, legitimately"
    ]
