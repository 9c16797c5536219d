"""Contour formats: real CAMELYON16 files, synthetic GeoJSON/ASAP/ImageScope, failure paths."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from common.errors import AnnotationError
from slides.wsi import annotations as ann_mod
from slides.wsi.annotations import (
    EXCLUSION,
    FORMAT_ASAP_XML,
    FORMAT_CAMELYON_JSON,
    FORMAT_GEOJSON,
    FORMAT_IMAGESCOPE_XML,
    NORMAL,
    TUMOR,
    AnnotationSet,
    Contour,
    match_slide_name,
    parse_annotations,
    parse_asap_xml,
    parse_camelyon_json,
    parse_geojson,
    parse_imagescope_xml,
    read_annotations,
    to_asap_xml,
    to_geojson,
)

# Measured from the files: (positive entries, negative entries).
CAMELYON_COUNTS = {
    "Normal_001.json": (0, 4),
    "Tumor_001.json": (2, 0),
    "Tumor_039.json": (4, 144),
    "Tumor_047.json": (67, 0),
    "Tumor_091.json": (6, 1),
    "Tumor_105.json": (159, 1),
    "Tumor_107.json": (2, 3),
}


@pytest.fixture(scope="module")
def camelyon_dir(shared_data: Path) -> Path:
    d = shared_data / "annotations" / "camelyon16"
    if not d.is_dir():
        pytest.skip(f"the CAMELYON16 contours folder {d} is absent")
    return d


def _same_contours(a: AnnotationSet, b: AnnotationSet) -> None:
    assert len(a.contours) == len(b.contours)
    for ca, cb in zip(a.contours, b.contours, strict=True):
        assert ca.label == cb.label
        assert ca.geometry.geom_type == cb.geometry.geom_type
        # Exact: same vertices, same floats.
        assert shapely.equals_exact(ca.geometry, cb.geometry, tolerance=0.0)


def _rel_sym_diff(g1: MultiPolygon, g2: MultiPolygon) -> float:
    return float(g1.symmetric_difference(g2).area / max(g1.area, g2.area))


# -- real CAMELYON16 files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CAMELYON_COUNTS))
def test_camelyon_json_counts(camelyon_dir: Path, name: str) -> None:
    raw = json.loads((camelyon_dir / name).read_text())
    n_pos, n_neg = len(raw["positive"]), len(raw["negative"])
    assert (n_pos, n_neg) == CAMELYON_COUNTS[name]
    a = read_annotations(camelyon_dir / name)
    assert a.source_format == FORMAT_CAMELYON_JSON
    tumor = [c for c in a.contours if c.label == TUMOR]
    negative_label = NORMAL if name.startswith("Normal") else EXCLUSION
    negative = [c for c in a.contours if c.label == negative_label]
    assert (len(tumor), len(negative)) == (n_pos, n_neg)
    assert [c.name for c in tumor] == [p["name"] for p in raw["positive"]]
    assert all(c.geometry.is_valid and c.geometry.area > 0 for c in a.contours)
    # Each repaired polygon is reported, and only those.
    n_invalid = sum(
        not Polygon(p["vertices"]).is_valid for k in ("positive", "negative") for p in raw[k]
    )
    assert len(a.warnings) == n_invalid
    if name.startswith("Normal"):
        assert a.tumor_geometry.is_empty and a.labels == (NORMAL,)
    else:
        assert a.tumor_geometry.area > 0
        # Exclusions only remove area.
        assert a.tumor_geometry.area <= a.geometry_of(TUMOR).area + 1e-6


def test_tumor_039_exclusions_become_holes(camelyon_dir: Path) -> None:
    a = read_annotations(camelyon_dir / "Tumor_039.json")
    g = a.tumor_geometry
    holes = sum(len(p.interiors) for p in g.geoms)
    assert holes > 100  # most of the 144 exclusions lie strictly inside the tumor
    assert g.area < a.geometry_of(TUMOR).area - a.geometry_of(EXCLUSION).area * 0.9


def test_tumor_001_json_and_asap_xml_agree(camelyon_dir: Path) -> None:
    xml_path = camelyon_dir / "tumor_001.xml"
    root = ET.parse(xml_path).getroot()
    counts = [len(a.findall("Coordinates/Coordinate")) for a in root.iter("Annotation")]
    assert counts == [855, 1657]
    x = read_annotations(xml_path)
    j = read_annotations(camelyon_dir / "Tumor_001.json")
    assert x.source_format == FORMAT_ASAP_XML
    assert len(x.contours) == len(j.contours) == 2
    assert all(c.label == TUMOR for c in x.contours)
    # The first polygon is valid and kept vertex for vertex (plus the closing vertex).
    assert len(x.contours[0].geometry.exterior.coords) == 855 + 1
    assert x.contours[0].geometry.exterior.coords[0] == (71924.3984, 131761.0)
    # JSON vertices are the XML's rounded to whole pixels.
    assert _rel_sym_diff(x.tumor_geometry, j.tumor_geometry) < 0.005
    for cx, cj in zip(x.contours, j.contours, strict=True):
        assert _rel_sym_diff(cx.geometry, cj.geometry) < 0.005


def test_tumor_047_parses_and_unions_fast(camelyon_dir: Path) -> None:
    t0 = time.perf_counter()
    a = read_annotations(camelyon_dir / "Tumor_047.json")
    g = a.tumor_geometry
    elapsed = time.perf_counter() - t0
    assert a.n_vertices > 70_000
    assert g.area > 0
    assert elapsed < 5.0, f"Tumor_047 took {elapsed:.2f} s"  # ~0.4 s measured


@pytest.mark.parametrize("name", ["Tumor_001.json", "Tumor_039.json", "Tumor_107.json"])
def test_real_round_trips(camelyon_dir: Path, name: str) -> None:
    a = read_annotations(camelyon_dir / name)
    # GeoJSON holds everything: exact, also through JSON text.
    g = parse_geojson(json.dumps(to_geojson(a)))
    _same_contours(a, g)
    assert [c.name for c in g.contours] == [c.name for c in a.contours]
    # ASAP XML has one ring per annotation: repaired multi-part contours are split, so the first
    # trip keeps the tumor geometry and the next trips are exact.
    b = parse_asap_xml(to_asap_xml(a))
    assert _rel_sym_diff(a.tumor_geometry, b.tumor_geometry) < 1e-9
    c = parse_asap_xml(to_asap_xml(b))
    _same_contours(b, c)


def test_real_asap_round_trip_is_exact(camelyon_dir: Path) -> None:
    x = read_annotations(camelyon_dir / "tumor_001.xml")
    y = parse_asap_xml(to_asap_xml(x))
    _same_contours(x, y)
    assert [c.name for c in y.contours] == ["Annotation 0", "Annotation 1"]


# -- GeoJSON ------------------------------------------------------------------------------------

SQUARE = [[0.0, 0.0], [100.0, 0.0], [100.0, 100.0], [0.0, 100.0], [0.0, 0.0]]
HOLE = [[40.0, 40.0], [60.0, 40.0], [60.0, 60.0], [40.0, 60.0], [40.0, 40.0]]


def _feature(geometry: dict, **props: object) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": dict(props)}


def test_geojson_shapes_and_classes() -> None:
    far = [[[x + 500.5, y] for x, y in SQUARE]]
    fc: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": [
            _feature(
                {"type": "Polygon", "coordinates": [SQUARE, HOLE]},
                classification={"name": "Tumor", "color": [1, 2, 3]},
                name="with hole",
                objectType="annotation",
            ),
            _feature({"type": "MultiPolygon", "coordinates": [[SQUARE], far]}, name="Tumor"),
            _feature({"type": "Polygon", "coordinates": [HOLE]}, classification={"name": "Stroma"}),
            _feature({"type": "Point", "coordinates": [1, 2]}, name="a point"),
            _feature({"type": "Polygon", "coordinates": [HOLE]}, objectType="detection"),
            {"type": "Feature", "geometry": None, "properties": {}},
        ],
    }
    a = parse_geojson(fc)
    assert a.source_format == FORMAT_GEOJSON
    assert [c.label for c in a.contours] == [TUMOR, TUMOR, "stroma"]
    assert a.contours[0].geometry.area == 100 * 100 - 20 * 20
    assert isinstance(a.contours[1].geometry, MultiPolygon)
    assert len(a.warnings) == 3  # point, detection, null geometry
    assert a.tumor_geometry.area == pytest.approx(2 * 100 * 100)  # the hole is covered by part 0
    # A single Feature and a bare list are accepted too.
    assert len(parse_geojson(fc["features"][0]).contours) == 1
    assert len(parse_geojson(json.dumps(fc["features"][:2])).contours) == 2
    # No classification, non-class name: tumor by default.
    default = parse_geojson([_feature({"type": "Polygon", "coordinates": [SQUARE]}, name="R1")])
    assert default.contours[0].label == TUMOR and default.contours[0].name == "R1"


def test_geojson_exclusion_is_subtracted() -> None:
    a = parse_geojson(
        [
            _feature(
                {"type": "Polygon", "coordinates": [SQUARE]}, classification={"name": "Tumor"}
            ),
            _feature(
                {"type": "Polygon", "coordinates": [HOLE]}, classification={"name": "Ignore*"}
            ),
        ]
    )
    assert a.tumor_geometry.area == 100 * 100 - 20 * 20


def test_geojson_round_trip_keeps_floats_and_authors() -> None:
    poly = Polygon([(0.1, 0.2), (10.3333333333333, 0.25), (5.5, 7.125)], [])
    multi = MultiPolygon([box(0, 0, 1, 1), box(2, 2, 3.5, 3.25)])
    holed = Polygon(SQUARE, [HOLE])
    a = AnnotationSet(
        (
            Contour(poly, label=TUMOR, name="t", author="dr. a", source="api"),
            Contour(multi, label=NORMAL, name="n"),
            Contour(holed, label="stroma", name="s"),
        ),
        source_format="api",
    )
    out = to_geojson(a)
    assert out["features"][0]["properties"]["classification"]["name"] == "Tumor"
    assert all(isinstance(v, float) for v in out["features"][1]["geometry"]["coordinates"][0][0][0])
    b = parse_geojson(json.loads(json.dumps(out)))
    _same_contours(a, b)
    assert b.contours[0].author == "dr. a"


def test_asap_round_trip_of_holes_and_multipolygons() -> None:
    a = AnnotationSet(
        (
            Contour(Polygon(SQUARE, [HOLE]), label=TUMOR, name="holed"),
            Contour(MultiPolygon([box(200, 0, 300, 50), box(400, 0, 450.5, 60.25)]), name="m"),
            Contour(box(0, 200, 10, 210), label=NORMAL, name="n"),
        ),
        source_format="api",
    )
    text = to_asap_xml(a)
    b = parse_asap_xml(text)
    assert [c.label for c in b.contours] == [TUMOR, EXCLUSION, TUMOR, TUMOR, NORMAL]
    assert b.tumor_geometry.symmetric_difference(a.tumor_geometry).area == 0.0
    assert b.geometry_of(NORMAL).equals(a.geometry_of(NORMAL))
    with pytest.raises(AnnotationError, match="holes"):
        to_asap_xml(AnnotationSet((Contour(Polygon(SQUARE, [HOLE]), label=NORMAL),), "api"))


# -- ASAP and ImageScope XML --------------------------------------------------------------------


def _asap(*annotations: tuple[str, str, list[tuple[float, float]]], kind: str = "Polygon") -> str:
    parts = []
    for name, group, pts in annotations:
        coords = "".join(
            f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(pts)
        )
        parts.append(
            f'<Annotation Name="{name}" Type="{kind}" PartOfGroup="{group}" Color="#F4FA58">'
            f"<Coordinates>{coords}</Coordinates></Annotation>"
        )
    return f"<ASAP_Annotations><Annotations>{''.join(parts)}</Annotations></ASAP_Annotations>"


def _sq(x0: float, y0: float, s: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x0 + s, y0), (x0 + s, y0 + s), (x0, y0 + s)]


def test_asap_groups() -> None:
    text = _asap(
        ("A", "_0", _sq(0, 0, 100)),
        ("B", "_1", _sq(200, 0, 100)),
        ("C", "Tumor", _sq(400, 0, 100)),
        ("D", "_2", _sq(10, 10, 20)),
        ("E", "Exclusion", _sq(210, 10, 30)),
        ("F", "None", _sq(600, 0, 10)),
    )
    a = parse_asap_xml(text)
    assert [c.label for c in a.contours] == [TUMOR, TUMOR, TUMOR, EXCLUSION, EXCLUSION, TUMOR]
    assert a.tumor_geometry.area == 3 * 100 * 100 - 20 * 20 - 30 * 30 + 10 * 10
    assert any("no group" in w for w in a.warnings)


def test_asap_order_attribute_and_decimal_comma() -> None:
    text = (
        '<ASAP_Annotations><Annotations><Annotation Name="x" Type="Polygon" PartOfGroup="_0">'
        '<Coordinates><Coordinate Order="2" X="10" Y="10"/><Coordinate Order="0" X="0" Y="0"/>'
        '<Coordinate Order="1" X="10,5" Y="0"/><Coordinate Order="3" X="0" Y="10"/>'
        "</Coordinates></Annotation></Annotations></ASAP_Annotations>"
    )
    c = parse_asap_xml(text).contours[0]
    assert list(c.geometry.exterior.coords)[:4] == [(0, 0), (10.5, 0), (10, 10), (0, 10)]


def test_asap_non_area_annotations_are_skipped() -> None:
    a = parse_asap_xml(_asap(("p", "_0", [(1, 1)]), kind="Dot"))
    assert a.contours == () and "no area" in a.warnings[0]


IMAGESCOPE = """<?xml version="1.0" encoding="UTF-8"?>
<Annotations MicronsPerPixel="0.252100">
<Annotation Id="1" Name="Tumor" ReadOnly="0" Type="4" LineColor="65280" Visible="1">
<Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes>
<Regions>
<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>
</RegionAttributeHeaders>
<Region Id="1" Type="0" Zoom="0.5" Text="big" NegativeROA="0" DisplayId="1"><Attributes/>
<Vertices><Vertex X="0" Y="0" Z="0"/><Vertex X="100" Y="0" Z="0"/><Vertex X="100" Y="100" Z="0"/>
<Vertex X="0" Y="100" Z="0"/></Vertices></Region>
<Region Id="2" Type="0" Text="" NegativeROA="1"><Vertices><Vertex X="40" Y="40"/>
<Vertex X="60" Y="40"/><Vertex X="60" Y="60"/><Vertex X="40" Y="60"/></Vertices></Region>
<Region Id="3" Type="1" NegativeROA="0"><Vertices><Vertex X="200" Y="0"/><Vertex X="210" Y="0"/>
<Vertex X="210" Y="10"/><Vertex X="200" Y="10"/></Vertices></Region>
<Region Id="4" Type="2" NegativeROA="0"><Vertices><Vertex X="300" Y="0"/>
<Vertex X="340" Y="20"/></Vertices></Region>
<Region Id="5" Type="3" NegativeROA="0"><Vertices><Vertex X="0" Y="0"/><Vertex X="5" Y="5"/>
</Vertices></Region>
</Regions><Plots/></Annotation>
<Annotation Id="2" Name="Layer 2"><Regions><Region Id="1" Type="0" NegativeROA="0"><Vertices>
<Vertex X="500" Y="500"/><Vertex X="510" Y="500"/><Vertex X="510" Y="510"/></Vertices></Region>
</Regions></Annotation>
</Annotations>
"""


def test_imagescope_regions() -> None:
    a = parse_imagescope_xml(IMAGESCOPE)
    assert a.source_format == FORMAT_IMAGESCOPE_XML
    assert [c.label for c in a.contours] == [TUMOR, EXCLUSION, TUMOR, TUMOR, TUMOR]
    assert a.contours[0].name == "big"
    ellipse = a.contours[3].geometry
    assert ellipse.area == pytest.approx(3.14159 * 20 * 10, rel=0.01)
    expected = 100 * 100 - 20 * 20 + 10 * 10 + ellipse.area + 50
    assert a.tumor_geometry.area == pytest.approx(expected)
    assert any("arrow" in w for w in a.warnings)
    assert parse_annotations(IMAGESCOPE).source_format == FORMAT_IMAGESCOPE_XML


# -- files and detection ------------------------------------------------------------------------


def test_format_is_detected_by_content(tmp_path: Path) -> None:
    p = tmp_path / "contours.txt"
    p.write_text(_asap(("A", "_0", _sq(0, 0, 10))))
    assert read_annotations(p).source_format == FORMAT_ASAP_XML
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"positive": [], "negative": []}).encode())
    assert read_annotations(p).source_format == FORMAT_CAMELYON_JSON
    p.write_text(json.dumps([_feature({"type": "Polygon", "coordinates": [SQUARE]})]))
    assert read_annotations(p).source_format == FORMAT_GEOJSON
    q = tmp_path / "lame_ñ_é.xml"  # non-ASCII file name
    q.write_text(IMAGESCOPE, encoding="utf-8")
    assert read_annotations(q).source_format == FORMAT_IMAGESCOPE_XML


def test_camelyon_negative_label() -> None:
    tri = {"name": "t", "vertices": [[0, 0], [10, 0], [0, 10]]}
    assert parse_camelyon_json({"positive": [], "negative": [tri]}).contours[0].label == NORMAL
    both = parse_camelyon_json({"positive": [tri], "negative": [tri]})
    assert [c.label for c in both.contours] == [TUMOR, EXCLUSION]
    forced = parse_camelyon_json({"negative": [tri]}, negative_label=EXCLUSION)
    assert forced.contours[0].label == EXCLUSION


# -- repairs and failures -----------------------------------------------------------------------


def test_small_self_intersection_is_repaired_with_a_warning() -> None:
    # A square whose last stroke overshoots and loops back: a tiny bow-tie lobe.
    pts = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 2], [1, -1], [0, -1]]
    a = parse_camelyon_json({"positive": [{"name": "loop", "vertices": pts}], "negative": []})
    assert a.contours[0].geometry.is_valid
    assert a.contours[0].geometry.area == pytest.approx(100 * 100, rel=0.01)
    assert "loop" in a.warnings[0] and "repaired" in a.warnings[0]


@pytest.mark.parametrize(
    ("vertices", "match"),
    [
        ([[0, 0], [10, 10]], "at least 3 distinct vertices"),
        ([[0, 0], [10, 10], [0, 0]], "at least 3 distinct vertices"),
        ([[0, 0], [10, 10], [10, 0], [0, 10]], "bowtie.*cannot be repaired"),
        ([[0, 0], [10, 0], [float("nan"), 10]], "non-finite"),
        ([[0, 0], [10, 0], ["a", 10]], "not numbers"),
        ([[0, 0], [5, 5], [10, 10]], "bowtie.*cannot be repaired"),
    ],
)
def test_bad_polygons_are_refused(vertices: list, match: str) -> None:
    data = {"positive": [{"name": "bowtie", "vertices": vertices}], "negative": []}
    with pytest.raises(AnnotationError, match=match if "bowtie" in match else f"bowtie.*{match}"):
        parse_camelyon_json(data)


def test_bow_tie_in_every_format_is_refused() -> None:
    bow = [(0.0, 0.0), (10.0, 10.0), (10.0, 0.0), (0.0, 10.0)]
    with pytest.raises(AnnotationError, match=r"'bow'.*Self-intersection"):
        parse_asap_xml(_asap(("bow", "_0", bow)))
    with pytest.raises(AnnotationError, match="cannot be repaired"):
        parse_geojson(_feature({"type": "Polygon", "coordinates": [[*bow, bow[0]]]}, name="b"))


def test_malformed_files_raise_annotation_error(tmp_path: Path) -> None:
    good = json.dumps(to_geojson(parse_asap_xml(_asap(("A", "_0", _sq(0, 0, 10))))))
    cases = {
        "truncated.geojson": good[: len(good) // 2],
        "truncated.xml": _asap(("A", "_0", _sq(0, 0, 10)))[:-30],
        "missing_x.xml": _asap(("A", "_0", _sq(0, 0, 10))).replace('X="10"', "", 1),
        "bad_number.xml": _asap(("A", "_0", _sq(0, 0, 10))).replace('X="10"', 'X="ten"', 1),
        "empty.json": "   ",
        "text.json": "hello",
        "other_root.xml": "<svg></svg>",
        "not_geojson.json": json.dumps({"type": "Topology"}),
        "bad_feature.json": json.dumps({"type": "FeatureCollection", "features": [1]}),
        "bad_camelyon.json": json.dumps({"positive": [{"name": "x"}]}),
        "unknown_geometry.json": json.dumps(_feature({"type": "Circle", "coordinates": []})),
        "entity.xml": '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><ASAP_Annotations/>',
        "short_ring.json": json.dumps(_feature({"type": "Polygon", "coordinates": [[[0, 0]]]})),
    }
    for name, text in cases.items():
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(AnnotationError) as info:
            read_annotations(p)
        assert name in info.value.message, name
        assert info.value.code == "invalid_annotation"
    with pytest.raises(AnnotationError, match="missing X"):
        parse_asap_xml(cases["missing_x.xml"])
    with pytest.raises(AnnotationError, match="cannot read"):
        read_annotations(tmp_path / "absent.xml")


def test_oversized_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.json"
    p.write_text(json.dumps({"positive": [], "negative": []}))
    monkeypatch.setattr(ann_mod, "MAX_ANNOTATION_FILE_BYTES", 10)
    with pytest.raises(AnnotationError, match="allowed"):
        read_annotations(p)


def test_contour_requires_area_geometry() -> None:
    with pytest.raises(AnnotationError):
        Contour(shapely.Point(0, 0))


# -- slide name matching ------------------------------------------------------------------------


def test_match_slide_name() -> None:
    slides = ["Tumor_001.tif", "Tumor_002.tif", "normal/Normal_001.tif", "x.svs", "x.tif"]
    assert match_slide_name("tumor_001.xml", slides) == "Tumor_001.tif"
    assert match_slide_name("Tumor_001.json", slides) == "Tumor_001.tif"
    assert match_slide_name("TUMOR_002.tif.geojson", slides) == "Tumor_002.tif"
    assert match_slide_name("Tumor_002.geojson", slides) == "Tumor_002.tif"
    assert match_slide_name("/uploads/Normal_001.xml", slides) == "normal/Normal_001.tif"
    assert match_slide_name("Tumor_003.xml", slides) is None
    assert match_slide_name("x.xml", slides) is None  # ambiguous: x.svs and x.tif
    assert match_slide_name("x.svs.geojson", slides) == "x.svs"  # the full name decides
    assert match_slide_name("Tumor_001.txt", slides) is None
