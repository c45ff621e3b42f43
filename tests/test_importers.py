"""Dataset importers: each real layout becomes a table numclip ingests, every bad line a reject with file:line."""

import csv
import io
from collections import Counter

import pytest
from PIL import Image

from numclip.core.errors import NumclipError
from numclip.data.sources import read_table
from numclip.data.validate import validate
from numclip.importers import IMPORTERS, import_dataset
from numclip.importers.adience import AGE_GROUPS, age_group
from numclip.importers.common import Bad
from numclip.importers.hci import DECADES

_PNG = io.BytesIO()
Image.new("RGB", (8, 8), (10, 20, 30)).save(_PNG, format="PNG")


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_PNG.getvalue())


def _table(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _rejects(report):
    return {r["source_row"]: r["reason"] for r in _table(report.rejects_out)}


def _assert_ingests(report):
    """numclip's own reader and validation accept the table, one fold at a time (an image may be in many)."""
    assert list(_table(report.out)[0]) == ["path", "label", "split", "fold", "group", "caption"]
    candidates = read_table(report.out)
    for fold in {c.fold for c in candidates}:
        rows, rejects = validate([c for c in candidates if c.fold == fold], report.images_root,
                                 report.num_ranks)
        assert rejects == [] and rows


# --------------------------------------------------------------------------------------------- morph
def _morph_root(tmp_path):
    root = tmp_path / "MORPH"
    for name in ["a_16", "b_40", "c_77", "d_30", "e_50"]:
        _png(root / "image" / f"{name}.png")
    return root


def test_morph_fold_folders(tmp_path):
    root = _morph_root(tmp_path)
    lists = root / "lists"
    for fold, (train, test) in {"setting_A/fold_0": (["a_16 16", "b_40 40"], ["c_77 77"]),
                                "setting_A/fold_1": (["c_77 77", "a_16 16"], ["b_40 40"])}.items():
        (lists / fold).mkdir(parents=True)
        (lists / fold / "train.txt").write_text("".join(f"image/{x.split()[0]}.png {x.split()[1]}\n"
                                                        for x in train))
        (lists / fold / "test.txt").write_text("".join(f"image/{x.split()[0]}.png {x.split()[1]}\n"
                                                       for x in test))
    (lists / "setting_A" / "fold_1" / "val.txt").write_text("image/d_30.png 30\n")
    report = IMPORTERS["morph"](root, tmp_path / "morph.csv")
    rows = _table(report.out)
    assert [(r["path"], r["label"], r["split"], r["fold"]) for r in rows] == [
        ("image/a_16.png", "0", "train", "0"), ("image/b_40.png", "24", "train", "0"),
        ("image/c_77.png", "61", "test", "0"),
        ("image/c_77.png", "61", "train", "1"), ("image/a_16.png", "0", "train", "1"),
        ("image/d_30.png", "14", "val", "1"), ("image/b_40.png", "24", "test", "1")]
    assert report.num_ranks == 62 and report.folds == [0, 1] and report.rejects == 0
    assert "fold 1 = lists/setting_A/fold_1" in report.notes
    assert all((root / r["path"]).is_file() for r in rows)
    assert report.params() == {"data.source": "table", "data.path": str(tmp_path / "morph.csv"),
                               "data.images_root": str(root), "data.num_ranks": 62}
    assert "morph: 7 rows, 0 rejects, K = 62, folds 0, 1" in report.summary()
    _assert_ingests(report)


def test_morph_malformed_lines_become_rejects(tmp_path):
    root = _morph_root(tmp_path)
    (root / "train.txt").write_text(
        "# comment\n"
        "image/a_16.png 16\n"            # 2: ok
        "image/b_40.png\n"               # 3: too few fields
        "image/c_77.png abc\n"           # 4: non-numeric age
        "\n"
        "image/d_30.png 90\n"            # 6: out of range
        "image/missing.png 30\n"         # 7: missing image
        "../../datasets/Morph/image/e_50.png 50\n"  # 8: written elsewhere: found as image/e_50.png
        "image/a_16.png 16\n")           # 9: duplicate
    (root / "test.txt").write_text("image/b_40.png 40.0\nimage/c_77.png 33.5\n")
    report = import_dataset("morph", root, tmp_path / "out" / "morph.csv")
    t = root / "train.txt"
    assert _rejects(report) == {
        f"{t}:3": "too few fields: expected '<path> <age>'",
        f"{t}:4": "non-numeric age 'abc'",
        f"{t}:6": "age 90 outside 16..77",
        f"{t}:7": "image not found under the dataset root",
        f"{t}:9": f"duplicate image (first at {t}:2)",
        f"{root / 'test.txt'}:2": "non-integer age '33.5'"}
    rows = _table(report.out)
    assert [(r["path"], r["label"], r["split"], r["fold"]) for r in rows] == [
        ("image/a_16.png", "0", "train", ""), ("image/e_50.png", "34", "train", ""),
        ("image/b_40.png", "24", "test", "")]
    assert report.rows + report.rejects == 7 + 2 and report.folds == []
    assert report.notes == ["1 list paths found only after dropping leading folders "
                            "(e.g. ../../datasets/Morph/image/e_50.png -> image/e_50.png)"]
    assert report.rejects_out == tmp_path / "out" / "morph.rejects.csv"
    assert _table(report.rejects_out)[2]["path"] == "image/d_30.png"
    _assert_ingests(report)


def test_morph_missing_list_file_names_it(tmp_path):
    root = _morph_root(tmp_path)
    (root / "fold_0").mkdir()
    (root / "fold_0" / "train.txt").write_text("image/a_16.png 16\n")
    (root / "fold_1").mkdir()
    (root / "fold_1" / "train.txt").write_text("image/a_16.png 16\n")
    (root / "fold_1" / "test.txt").write_text("image/b_40.png 40\n")
    with pytest.raises(NumclipError, match=r"list file not found: .*fold_0/test\.txt"):
        IMPORTERS["morph"](root, tmp_path / "m.csv")
    with pytest.raises(NumclipError, match="no MORPH list files"):
        IMPORTERS["morph"](root, tmp_path / "m.csv", lists=root / "image")


def test_morph_csv_case_insensitive_columns(tmp_path):
    root = _morph_root(tmp_path)
    (root / "morph_2008.csv").write_text(
        "ID_num,Photo,AGE,gender\n1,image/a_16.png,16,M\n2,image/b_40.png,xx,F\n3,image/c_77.png,77,M,extra\n"
        "4,image/d_30.png,30,F\n")
    report = IMPORTERS["morph"](root, tmp_path / "m.csv")
    assert [(r["path"], r["label"], r["split"], r["fold"]) for r in _table(report.out)] == [
        ("image/a_16.png", "0", "", ""), ("image/d_30.png", "14", "", "")]
    f = root / "morph_2008.csv"
    assert _rejects(report) == {f"{f}:3": "non-numeric age 'xx'", f"{f}:4": "5 fields but the header has 4"}
    _assert_ingests(report)
    (root / "bad.csv").write_text("photo,years\nimage/a_16.png,16\n")
    with pytest.raises(NumclipError, match=r"bad\.csv: no age column"):
        IMPORTERS["morph"](root, tmp_path / "m.csv", csv_path=root / "bad.csv")
    with pytest.raises(NumclipError, match="several CSVs"):
        IMPORTERS["morph"](root, tmp_path / "m.csv")


def test_morph_ordinalclip_offset_and_unknown_options(tmp_path):
    root = _morph_root(tmp_path)
    (root / "lists").mkdir()
    (root / "lists" / "ET_proto_train.txt").write_text("image/a_16.png 16\n")
    (root / "lists" / "ET_proto_test.txt").write_text("image/b_40.png 40\n")
    report = IMPORTERS["morph"](root, tmp_path / "m.csv", label_offset=0, num_ranks=101)
    assert [r["label"] for r in _table(report.out)] == ["16", "40"] and report.num_ranks == 101
    with pytest.raises(NumclipError, match="unknown option.*offset"):
        import_dataset("morph", root, tmp_path / "m.csv", offset=0)
    with pytest.raises(NumclipError, match="unknown dataset 'imdb'"):
        import_dataset("imdb", root, tmp_path / "m.csv")


# ------------------------------------------------------------------------------------------- adience
HEADER = ("user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
          "fiducial_yaw_angle\tfiducial_score\n")


def _adience_line(user, image, face, age):
    return f"{user}\t{image}\t{face}\t{age}\tf\t0\t0\t10\t10\t0\t0\t50\n"


def _adience_root(tmp_path):
    root = tmp_path / "adience"
    root.mkdir()
    for fold in range(5):
        _png(root / "faces" / f"u{fold}" / f"coarse_tilt_aligned_face.1.img{fold}.jpg")
        _png(root / "aligned" / f"u{fold}" / f"landmark_aligned_face.2.img{fold}.jpg")
        (root / f"fold_{fold}_data.txt").write_text(
            HEADER + _adience_line(f"u{fold}", f"img{fold}.jpg", 1, AGE_GROUPS[fold])
            + _adience_line(f"u{fold}", f"img{fold}.jpg", 2, "(38, 42)"))
    return root


def test_adience_fold_files(tmp_path):
    root = _adience_root(tmp_path)
    f0 = root / "fold_0_data.txt"
    f0.write_text(HEADER
                  + _adience_line("u0", "img0.jpg", 1, "(0, 2)")        # 2: faces/
                  + _adience_line("u0", "img0.jpg", 2, "(27, 32)")      # 3: aligned/, mapped to (25, 32)
                  + "u0\timg0.jpg\t1\n"                                 # 4: too few fields
                  + _adience_line("u0", "img0.jpg", 3, "None")          # 5
                  + _adience_line("u0", "img0.jpg", 3, "(8, 23)")       # 6
                  + _adience_line("u0", "img0.jpg", 3, "35")            # 7: between groups
                  + _adience_line("u0", "gone.jpg", 1, "(4, 6)"))       # 8: missing image
    report = IMPORTERS["adience"](root, tmp_path / "adience.csv")
    rows = _table(report.out)
    assert [(r["path"], r["label"], r["fold"], r["split"]) for r in rows[:2]] == [
        ("faces/u0/coarse_tilt_aligned_face.1.img0.jpg", "0", "0", ""),
        ("aligned/u0/landmark_aligned_face.2.img0.jpg", "4", "0", "")]
    assert [(r["label"], r["fold"]) for r in rows[2:]] == [
        ("1", "1"), ("5", "1"), ("2", "2"), ("5", "2"), ("3", "3"), ("5", "3"), ("4", "4"), ("5", "4")]
    assert _rejects(report) == {
        f"{f0}:4": "too few fields (3; the age is field 4)",
        f"{f0}:5": "no age group ('None')",
        f"{f0}:6": "age range (8, 23) is not one of the 8 Adience groups",
        f"{f0}:7": "age 35 lies between two Adience groups",
        f"{f0}:8": "image not found (tried faces/u0/coarse_tilt_aligned_face.1.gone.jpg, "
                   "aligned/u0/landmark_aligned_face.1.gone.jpg)"}
    assert report.rows + report.rejects == 7 + 4 * 2
    assert report.num_ranks == 8 and report.folds == [0, 1, 2, 3, 4]
    assert all((root / r["path"]).is_file() for r in rows)
    _assert_ingests(report)
    _png(root / "aligned/u0/landmark_aligned_face.1.img0.jpg")  # now both layouts hold face 1
    assert _table(IMPORTERS["adience"](root, tmp_path / "a2.csv").out)[0]["path"].startswith("faces/")
    aligned_first = IMPORTERS["adience"](root, tmp_path / "a2.csv", prefer="aligned")
    assert _table(aligned_first.out)[0]["path"] == "aligned/u0/landmark_aligned_face.1.img0.jpg"


def test_adience_age_groups():
    assert [age_group(str(g)) for g in AGE_GROUPS] == list(range(8))
    assert age_group("(38, 48)") == 5 and age_group(" 5 ") == 1 and age_group("50") == 6
    for bad in ["None", "", "(8, 23)", "(13, 14)", "3", "35", "57", "101", "adult"]:
        with pytest.raises(Bad):
            age_group(bad)


def test_adience_structural_errors(tmp_path):
    root = _adience_root(tmp_path)
    (root / "fold_3_data.txt").unlink()
    with pytest.raises(NumclipError, match=r"list file not found: .*fold_3_data\.txt"):
        IMPORTERS["adience"](root, tmp_path / "a.csv")
    (root / "fold_3_data.txt").write_text(_adience_line("u3", "img3.jpg", 1, "(15, 20)"))
    with pytest.raises(NumclipError, match=r"fold_3_data\.txt:1 is not the Adience header"):
        IMPORTERS["adience"](root, tmp_path / "a.csv")
    with pytest.raises(NumclipError, match="no Adience fold files"):
        IMPORTERS["adience"](root / "faces", tmp_path / "a.csv")


def test_adience_ordinalclip_lists_one_row_per_fold_and_image(tmp_path):
    root = tmp_path / "adience"
    for name in "abcd":
        _png(root / "aligned" / "u" / f"landmark_aligned_face.1.{name}.jpg")
    img = "u/landmark_aligned_face.1.{}.jpg {}\n".format
    lists = root / "data_list"
    for fold, (train, val, test) in enumerate([("a", "b", "c"), ("c", "b", "a")]):
        d = lists / f"test_fold_is_{fold}"
        d.mkdir(parents=True)
        (d / "train.txt").write_text(img(train, 0) + img("d", 7))
        (d / "val.txt").write_text(img(val, 3))
        (d / "test.txt").write_text(img(test, 5) + ("u/x.jpg 9\nu/nope.jpg 1\n" if fold else ""))
    report = IMPORTERS["adience"](root, tmp_path / "adience.csv")
    rows = _table(report.out)
    assert [(r["path"].split(".")[-2], r["label"], r["split"], r["fold"]) for r in rows] == [
        ("a", "0", "train", "0"), ("d", "7", "train", "0"), ("b", "3", "val", "0"), ("c", "5", "test", "0"),
        ("c", "0", "train", "1"), ("d", "7", "train", "1"), ("b", "3", "val", "1"), ("a", "5", "test", "1")]
    assert all(r["path"].startswith("aligned/u/") for r in rows)
    t1 = lists / "test_fold_is_1" / "test.txt"
    assert _rejects(report) == {f"{t1}:2": "image not found under the dataset root",
                                f"{t1}:3": "image not found under the dataset root"}
    (root / "aligned" / "u" / "x.jpg").write_bytes(_PNG.getvalue())
    assert _rejects(IMPORTERS["adience"](root, tmp_path / "adience.csv"))[f"{t1}:2"] == "label 9 outside [0, 8)"
    _assert_ingests(report)
    (lists / "test_fold_is_0" / "test.txt").unlink()
    with pytest.raises(NumclipError, match=r"list file not found: .*test_fold_is_0/test\.txt"):
        IMPORTERS["adience"](root, tmp_path / "adience.csv")


# ----------------------------------------------------------------------------------------------- hci
@pytest.fixture(scope="module")
def hci_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hci") / "HistoricalColor-ECCV2012" / "data" / "imgs"
    for decade in DECADES:
        for i in range(265):
            _png(root / "decade_database" / decade / f"{decade}_{i:03d}.jpg")
    return root.parent.parent


def test_hci_protocol_counts_per_decade_and_fold(hci_root, tmp_path):
    report = IMPORTERS["hci"](hci_root, tmp_path / "hci.csv")
    rows = _table(report.out)
    assert report.num_ranks == 5 and report.folds == list(range(10)) and report.rejects == 0
    assert len(rows) == 10 * 5 * 265 and report.notes == []
    counts = Counter((r["fold"], r["label"], r["split"]) for r in rows)
    assert all(counts[(str(f), str(k), s)] == n for f in range(10) for k in range(5)
               for s, n in [("train", 210), ("val", 5), ("test", 50)])
    assert all(r["path"].startswith(f"data/imgs/decade_database/{DECADES[int(r['label'])]}/") for r in rows)
    assert (hci_root / rows[0]["path"]).is_file()
    tests = [{r["path"] for r in rows if r["fold"] == str(f) and r["split"] == "test"} for f in range(10)]
    assert len({frozenset(t) for t in tests}) == 10
    again = IMPORTERS["hci"](hci_root, tmp_path / "again.csv")
    assert again.out.read_bytes() == report.out.read_bytes()
    other = IMPORTERS["hci"](hci_root, tmp_path / "other.csv", seed=1)
    assert other.out.read_bytes() != report.out.read_bytes()
    candidates = [c for c in read_table(report.out) if c.fold in ("0", "9")]
    for fold in ("0", "9"):
        ok, rejects = validate([c for c in candidates if c.fold == fold], hci_root, 5, verify_images=False)
        assert rejects == [] and len(ok) == 5 * 265


def test_hci_small_decades_scale_and_missing_decade(tmp_path):
    root = tmp_path / "hci"
    for k, decade in enumerate(DECADES):
        for i in range(53 + k):
            _png(root / decade[:-1] / f"{i}.png")  # folders named 1930 … 1970
    (root / "1950" / "notes.txt").write_text("not an image")
    report = IMPORTERS["hci"](root, tmp_path / "hci.csv", num_folds=2, seed=3)
    counts = Counter((r["fold"], r["label"], r["split"]) for r in _table(report.out))
    assert [counts[("1", "0", s)] for s in ("train", "val", "test")] == [42, 1, 10]
    assert report.rows == 2 * sum(53 + k for k in range(5))
    assert "1930s: 53 images, fewer than 265: counts scaled to 42 train / 1 val / 10 test (53 used)" in report.notes
    assert "note: 1930s: 53 images" in report.summary()
    _assert_ingests(report)
    for f in (root / "1960").iterdir():
        f.unlink()
    with pytest.raises(NumclipError, match=r"1960 holds no images"):
        IMPORTERS["hci"](root, tmp_path / "hci.csv")
    (root / "1960").rmdir()
    with pytest.raises(NumclipError, match=r"HCI decade folder not found: .*1960s"):
        IMPORTERS["hci"](root, tmp_path / "hci.csv")


# ---------------------------------------------------------------------------------------- aesthetics
CATS = ("animals", "urban", "people", "nature")


def _aesthetics_root(tmp_path, per_grade=5):
    root = tmp_path / "aesthetics"
    lines = ["#flickr_photo_id\tcategory\tbeauty_scores"]
    for c in CATS:
        for grade in range(1, 6):
            for i in range(per_grade):
                photo = f"{c[:2]}{grade}{i}"
                _png(root / "img_files" / f"{photo}.jpg")
                lines.append(f"{photo}\t{'animal' if c == 'animals' else c}\t{grade},{grade},{min(grade + 1, 5)}")
    return root, lines


def test_aesthetics_tsv_stratified_folds(tmp_path):
    root, lines = _aesthetics_root(tmp_path)
    (root / "beauty-icwsm15-dataset.tsv").write_text("\n".join(lines) + "\n")
    report = IMPORTERS["aesthetics"](root, tmp_path / "aes.csv")
    rows = _table(report.out)
    assert report.rows == 100 and report.rejects == 0 and report.folds == [0, 1, 2, 3, 4]
    assert {r["group"] for r in rows} == set(CATS) and {r["split"] for r in rows} == {""}
    per = Counter((r["group"], r["label"], r["fold"]) for r in rows)
    assert set(per.values()) == {1} and len(per) == 4 * 5 * 5  # each (category, grade) once per fold
    assert all(int(r["label"]) == int(r["path"].split("/")[-1][2]) - 1 for r in rows)
    assert rows[0]["path"].startswith("img_files/")
    again = IMPORTERS["aesthetics"](root, tmp_path / "again.csv")
    assert again.out.read_bytes() == report.out.read_bytes()
    assert IMPORTERS["aesthetics"](root, tmp_path / "s.csv", seed=7).out.read_bytes() != report.out.read_bytes()
    _assert_ingests(report)


def test_aesthetics_rater_columns_and_rejects(tmp_path):
    root = tmp_path / "aes"
    for name in ["a", "b", "c", "d", "e"]:
        _png(root / "people" / f"{name}.png")
    table = root / "scores.csv"
    table.write_text("Image,Category,rater1,rater2,rater3,rater4,rater5\n"
                     "a.png,people,1,2,3,4,\n"          # 2: median 2.5 -> grade 3 -> label 2
                     "b,people,5,5,4,4,5\n"             # 3: no suffix: found as people/b.png
                     "c.png,cars,3,3,3,3,3\n"           # 4: unknown category
                     "d.png,people,3,7,3,3,3\n"         # 5: score out of range
                     "e.png,people,3,x,3,3,3\n"         # 6: non-numeric
                     "f.png,people,3,3,3,3,3\n"         # 7: missing image
                     "e.png,people,3,3\n"               # 8: too few fields
                     ",,,,,,\n")                        # blank row: not data
    report = IMPORTERS["aesthetics"](root, tmp_path / "aes.csv", categories=["people"], num_folds=2)
    assert [(r["path"], r["label"], r["group"]) for r in _table(report.out)] == [
        ("people/a.png", "2", "people"), ("people/b.png", "4", "people")]
    assert _rejects(report) == {f"{table}:4": "unknown category 'cars'",
                                f"{table}:5": "score 7 outside 1..5",
                                f"{table}:6": "non-numeric score 'x'",
                                f"{table}:7": "image not found under the dataset root",
                                f"{table}:8": "4 fields but the header has 7"}
    assert report.rows + report.rejects == 7
    _assert_ingests(report)
    (root / "bad.csv").write_text("image,category,likes\na.png,people,3\n")
    with pytest.raises(NumclipError, match=r"bad\.csv: no grade columns"):
        IMPORTERS["aesthetics"](root, tmp_path / "aes.csv", csv_path=root / "bad.csv")


def test_aesthetics_lists_with_folds_and_whole_category_lists(tmp_path):
    root = tmp_path / "aes"
    for c in CATS:
        for name in "abc":
            _png(root / c / f"{name}.jpg")
    lists = root / "lists"
    for c in ("animals", "urban"):
        for fold in range(5):
            d = lists / c / f"fold_{fold}"
            d.mkdir(parents=True)
            (d / "train.txt").write_text(f"{c}/a.jpg 1\n{c}/b.jpg 5\n")
            (d / "test.txt").write_text(f"c.jpg 3\n{c}/zz.jpg 2\n" if fold == 0 else f"{c}/c.jpg 3\n")
    for c in ("people", "nature"):
        (lists / f"{c}_datasets.txt").write_text("a.jpg\t4.0\nb.jpg\t1.0\nc.jpg\t2.5\nc.jpg 6.0\n")
    report = IMPORTERS["aesthetics"](root, tmp_path / "aes.csv", lists=lists, list_grades=True)
    rows = _table(report.out)
    animals = [(r["path"], r["label"], r["split"], r["fold"]) for r in rows if r["group"] == "animals"]
    assert len(animals) == 15 and animals[:3] == [("animals/a.jpg", "0", "train", "0"),
                                                  ("animals/b.jpg", "4", "train", "0"),
                                                  ("animals/c.jpg", "2", "test", "0")]
    assert Counter(r["fold"] for r in rows if r["group"] == "urban") == {str(f): 3 for f in range(5)}
    people = sorted((r["path"], r["label"]) for r in rows if r["group"] == "people")
    assert people == [("people/a.jpg", "3"), ("people/b.jpg", "0"), ("people/c.jpg", "2")]
    assert {r["split"] for r in rows if r["group"] == "nature"} == {""}
    assert _rejects(report) == {
        f"{lists / 'animals/fold_0/test.txt'}:2": "image not found under the dataset root",
        f"{lists / 'urban/fold_0/test.txt'}:2": "image not found under the dataset root",
        f"{lists / 'people_datasets.txt'}:4": "grade 6.0 outside 1..5",
        f"{lists / 'nature_datasets.txt'}:4": "grade 6.0 outside 1..5"}
    assert report.rows + report.rejects == 2 * (5 * 3 + 1) + 2 * 4
    _assert_ingests(report)

    ranks = IMPORTERS["aesthetics"](root, tmp_path / "r.csv", lists=lists, categories=["animals"])
    assert [r["label"] for r in _table(ranks.out)][:2] == ["1", "3"]
    assert _rejects(ranks)[f"{lists / 'animals/fold_0/train.txt'}:2"] == "label 5 outside [0, 5)"
    (lists / "nature_datasets.txt").unlink()
    with pytest.raises(NumclipError, match=r"no Aesthetics lists for category nature"):
        IMPORTERS["aesthetics"](root, tmp_path / "aes.csv", lists=lists)
    (lists / "urban" / "fold_3" / "test.txt").unlink()
    with pytest.raises(NumclipError, match=r"list file not found: .*urban/fold_3/test\.txt"):
        IMPORTERS["aesthetics"](root, tmp_path / "aes.csv", lists=lists, categories=["urban"])
