"""Pathologists' contours: read, repair, combine and write them, without Django.

Contours are polygons in level-0 pixel coordinates of their slide. Four file formats are read,
detected by content, not by extension:

- GeoJSON, as QuPath exports it (a Feature, a FeatureCollection or a bare list of Features;
  Polygon and MultiPolygon with holes; the class in ``properties.classification.name``);
- ASAP XML (``<ASAP_Annotations>``), the CAMELYON16/17 format: groups ``_0``, ``_1`` and
  ``Tumor`` are tumor, ``_2`` and ``Exclusion`` are holes cut out of the tumor;
- Aperio ImageScope XML (``<Annotations><Annotation><Regions><Region>``): regions with
  ``NegativeROA="1"`` are holes;
- the CAMELYON16 JSON conversion ``{"positive": [...], "negative": [...]}``.

Labels are normalised to lower case; ``"tumor"`` regions minus ``"exclusion"`` regions give the
tumor geometry the maps are scored against. Hand-drawn polygons often cross themselves; such a
polygon is repaired when the repair keeps its area (within ``REPAIR_AREA_TOLERANCE``), with a
warning, and refused otherwise. A malformed file raises :class:`AnnotationError`, never returns a
partial result.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePath
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from common.errors import AnnotationError

TUMOR = "tumor"
EXCLUSION = "exclusion"
NORMAL = "normal"

FORMAT_GEOJSON = "geojson"
FORMAT_ASAP_XML = "asap_xml"
FORMAT_IMAGESCOPE_XML = "imagescope_xml"
FORMAT_CAMELYON_JSON = "camelyon_json"
FORMATS = (FORMAT_GEOJSON, FORMAT_ASAP_XML, FORMAT_IMAGESCOPE_XML, FORMAT_CAMELYON_JSON)

# The largest real contour files (CAMELYON16 XML with 70k+ vertices, QuPath exports of a whole
# slide) are a few tens of MB; a bigger upload is not a contour file, and parsing it whole would
# take a worker's memory.
MAX_ANNOTATION_FILE_BYTES = 256 * 1024 * 1024

# A repair may change a polygon's area by at most this fraction. Measured on the CAMELYON16
# contours (48 self-intersecting polygons in 8 files): the kept repair changes the area by at
# most 0.47% (a 20k px^2 region; make_valid alone would change it by 0.95%). A larger change
# means the repair re-draws the region (a bow-tie's two lobes have a signed area near 0), which
# is refused rather than guessed.
REPAIR_AREA_TOLERANCE = 0.02

# A polygon needs three distinct vertices to enclose an area.
MIN_POLYGON_VERTICES = 3

# Class names (lower case) meaning tumor or exclusion, across QuPath, ASAP/CAMELYON and
# ImageScope conventions; any other name is kept as its own label.
_TUMOR_NAMES = frozenset(
    {"tumor", "tumour", "_0", "_1", "metastasis", "metastases", "carcinoma", "cancer"}
)
_EXCLUSION_NAMES = frozenset(
    {"exclusion", "excluded", "exclude", "_2", "ignore", "ignore*", "hole", "not tumor"}
)
_NORMAL_NAMES = frozenset({"normal", "normal tissue", "benign"})

# How a label is written back: QuPath and ASAP capitalise class and group names.
_EXPORT_NAMES = {TUMOR: "Tumor", EXCLUSION: "Exclusion", NORMAL: "Normal"}
_QUPATH_COLORS = {TUMOR: [200, 0, 0], EXCLUSION: [80, 80, 80], NORMAL: [0, 160, 0]}
_ASAP_COLORS = {TUMOR: "#F4FA58", EXCLUSION: "#64FE2E", NORMAL: "#2E64FE"}

# QuPath object types that are not hand-drawn regions: cell and tile detections would add
# thousands of tiny "tumor" polygons.
_QUPATH_NON_ANNOTATIONS = frozenset({"detection", "cell", "tile"})

_IMAGESCOPE_NON_AREA = {"3": "arrow", "4": "ruler", "5": "polyline"}

Geometry: TypeAlias = Polygon | MultiPolygon


def normalize_label(name: str | None, default: str = TUMOR) -> str:
    """Map a class or group name to a TumorMap label (lower case; tumor/exclusion/normal)."""
    if name is None:
        return default
    key = name.strip().lower()
    if not key or key == "none":
        return default
    if key in _TUMOR_NAMES:
        return TUMOR
    if key in _EXCLUSION_NAMES:
        return EXCLUSION
    if key in _NORMAL_NAMES:
        return NORMAL
    return key


def _known_label(name: str | None) -> str | None:
    """The label of a class-like name, or None when the name is not a class (e.g. "Region 3")."""
    if name is None:
        return None
    key = name.strip().lower()
    if key in _TUMOR_NAMES or key in _EXCLUSION_NAMES or key in _NORMAL_NAMES:
        return normalize_label(key)
    return None


@dataclass(frozen=True)
class Contour:
    """One drawn region: level-0 pixel geometry (holes allowed) and its class."""

    geometry: Geometry
    label: str = TUMOR
    name: str = ""
    author: str | None = None
    source: str = "unknown"

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, (Polygon, MultiPolygon)):
            raise AnnotationError(
                f"contour {self.name!r}: a contour is a Polygon or MultiPolygon, got "
                f"{type(self.geometry).__name__}"
            )

    @property
    def n_vertices(self) -> int:
        return int(shapely.get_num_coordinates(self.geometry))


def _as_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """The polygonal part of a geometry as a MultiPolygon (lines and points dropped)."""
    if geom.is_empty:
        return MultiPolygon()
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    parts = [p for p in shapely.get_parts(geom) if not p.is_empty]
    polys: list[Polygon] = []
    for p in parts:
        if isinstance(p, Polygon):
            polys.append(p)
        elif isinstance(p, MultiPolygon):
            polys.extend(p.geoms)
        elif p.geom_type == "GeometryCollection":
            polys.extend(_as_multipolygon(p).geoms)
    return MultiPolygon(polys)


def _union(geoms: Sequence[BaseGeometry]) -> MultiPolygon:
    if not geoms:
        return MultiPolygon()
    return _as_multipolygon(shapely.union_all(np.asarray(geoms, dtype=object)))


@dataclass(frozen=True)
class AnnotationSet:
    """The contours of one slide, the format they came from, and what was repaired or skipped."""

    contours: tuple[Contour, ...]
    source_format: str
    warnings: tuple[str, ...] = field(default=())

    def geometry_of(self, label: str) -> MultiPolygon:
        """Union of the contours with this label."""
        return _union([c.geometry for c in self.contours if c.label == label])

    @cached_property
    def tumor_geometry(self) -> MultiPolygon:
        """Union of the tumor contours, with their holes and the exclusion regions cut out."""
        tumor = self.geometry_of(TUMOR)
        exclusion = self.geometry_of(EXCLUSION)
        if tumor.is_empty or exclusion.is_empty:
            return tumor
        return _as_multipolygon(tumor.difference(exclusion))

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted({c.label for c in self.contours}))

    @property
    def n_vertices(self) -> int:
        return sum(c.n_vertices for c in self.contours)


# -- geometry checks ----------------------------------------------------------------------------


def _ring_array(raw: Any, where: str) -> npt.NDArray[np.float64]:
    """A ring's vertices as an (n, 2) float array; refuses non-numbers and NaN."""
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"{where}: coordinates are not numbers ({exc})") from exc
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] not in (2, 3):
        raise AnnotationError(f"{where}: expected a list of [x, y] vertices")
    arr = arr[:, :2]
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise AnnotationError(
            f"{where}: vertex {int(bad[0])} has a non-finite coordinate (NaN or infinity)"
        )
    return arr


def _check_vertex_count(arr: npt.NDArray[np.float64], where: str) -> None:
    n_distinct = len(np.unique(arr, axis=0))
    if n_distinct < MIN_POLYGON_VERTICES:
        raise AnnotationError(
            f"{where}: a polygon needs at least {MIN_POLYGON_VERTICES} distinct vertices, "
            f"got {n_distinct}"
        )


def _polygon(
    shell: npt.NDArray[np.float64], holes: Sequence[npt.NDArray[np.float64]], where: str
) -> Polygon:
    _check_vertex_count(shell, where)
    for i, h in enumerate(holes):
        _check_vertex_count(h, f"{where}, hole {i}")
    return Polygon(shell, list(holes))


def _validated(geom: Geometry, where: str, warnings: list[str]) -> Geometry:
    """Return ``geom`` if valid, else a repair that keeps its area, else raise."""
    if geom.is_valid:
        if geom.area <= 0:
            raise AnnotationError(f"{where}: the polygon encloses no area")
        return geom
    reason = explain_validity(geom)
    input_area = abs(geom.area)  # shoelace area of what was drawn
    candidates = [_as_multipolygon(shapely.make_valid(geom)), _as_multipolygon(geom.buffer(0))]
    best: MultiPolygon | None = None
    best_change = math.inf
    for cand in candidates:
        if cand.is_empty or not cand.is_valid:
            continue
        change = abs(cand.area - input_area) / max(cand.area, input_area)
        if change < best_change:
            best, best_change = cand, change
    if best is None or best_change > REPAIR_AREA_TOLERANCE:
        change_txt = "it has no area left" if best is None else f"{best_change:.1%}"
        raise AnnotationError(
            f"{where}: invalid geometry ({reason}) cannot be repaired without changing its "
            f"area ({change_txt}; at most {REPAIR_AREA_TOLERANCE:.0%} allowed)",
            details={"polygon": where, "reason": reason},
        )
    warnings.append(
        f"{where}: repaired invalid geometry ({reason}); area changed by {best_change:.3%}"
    )
    return best.geoms[0] if len(best.geoms) == 1 else best


# -- GeoJSON ------------------------------------------------------------------------------------


def _load_json(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and bad UTF-8 in bytes.
        raise AnnotationError(f"malformed JSON: {exc}") from exc


def _geojson_polygon(coords: Any, where: str) -> Polygon:
    if not isinstance(coords, list) or not coords:
        raise AnnotationError(f"{where}: a Polygon's coordinates are a non-empty list of rings")
    rings = [_ring_array(r, f"{where}, ring {i}") for i, r in enumerate(coords)]
    return _polygon(rings[0], rings[1:], where)


def _geojson_geometry(geom: Any, where: str, warnings: list[str]) -> Geometry | None:
    """A GeoJSON geometry as a valid (Multi)Polygon; None (with a warning) if it has no area."""
    if geom is None:
        warnings.append(f"{where}: no geometry, skipped")
        return None
    if not isinstance(geom, Mapping) or not isinstance(geom.get("type"), str):
        raise AnnotationError(f"{where}: a geometry is an object with a 'type'")
    gtype = geom["type"]
    if gtype == "Polygon":
        return _validated(_geojson_polygon(geom.get("coordinates"), where), where, warnings)
    if gtype == "MultiPolygon":
        coords = geom.get("coordinates")
        if not isinstance(coords, list) or not coords:
            raise AnnotationError(f"{where}: a MultiPolygon's coordinates are a list of polygons")
        parts: list[Polygon] = []
        for i, pc in enumerate(coords):
            pwhere = f"{where}, part {i}"
            part = _validated(_geojson_polygon(pc, pwhere), pwhere, warnings)
            parts.extend(part.geoms if isinstance(part, MultiPolygon) else [part])
        multi = MultiPolygon(parts)
        if not multi.is_valid:
            # Overlapping parts: their union is what was meant.
            warnings.append(f"{where}: overlapping MultiPolygon parts merged")
            merged = _union(parts)
            return merged.geoms[0] if len(merged.geoms) == 1 else merged
        return multi
    if gtype == "GeometryCollection":
        members = geom.get("geometries")
        if not isinstance(members, list):
            raise AnnotationError(f"{where}: a GeometryCollection has a 'geometries' list")
        polys: list[Polygon] = []
        for i, member in enumerate(members):
            g = _geojson_geometry(member, f"{where}, member {i}", warnings)
            if g is not None:
                polys.extend(g.geoms if isinstance(g, MultiPolygon) else [g])
        if not polys:
            return None
        merged = _union(polys)
        return merged.geoms[0] if len(merged.geoms) == 1 else merged
    if gtype in ("Point", "MultiPoint", "LineString", "MultiLineString"):
        warnings.append(f"{where}: a {gtype} has no area, skipped")
        return None
    raise AnnotationError(f"{where}: unknown geometry type {gtype!r}")


def _classification_name(props: Mapping[str, Any]) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, Mapping) and isinstance(cls.get("name"), str):
        return str(cls["name"])
    if isinstance(cls, str):
        return cls
    return None


def parse_geojson(data: str | bytes | Mapping[str, Any] | list[Any]) -> AnnotationSet:
    """Read GeoJSON contours (QuPath's export): a Feature, FeatureCollection or list of Features.

    The label comes from ``properties.classification.name``, else from ``properties.name`` when
    that is a class name ("Tumor", "Exclusion", ...), else is ``"tumor"``. Point and line
    features and QuPath detections are skipped with a warning.
    """
    obj = _load_json(data) if isinstance(data, (str, bytes)) else data
    warnings: list[str] = []
    if isinstance(obj, list):
        features: Any = obj
    elif isinstance(obj, Mapping):
        otype = obj.get("type")
        if otype == "FeatureCollection":
            features = obj.get("features")
            if not isinstance(features, list):
                raise AnnotationError("a FeatureCollection has a 'features' list")
        elif otype == "Feature":
            features = [obj]
        elif otype in ("Polygon", "MultiPolygon", "GeometryCollection"):
            features = [{"type": "Feature", "geometry": obj, "properties": {}}]
        else:
            raise AnnotationError(f"not GeoJSON: top-level type {otype!r}")
    else:
        raise AnnotationError("not GeoJSON: expected an object or a list of Features")

    contours: list[Contour] = []
    for i, feat in enumerate(features):
        if not isinstance(feat, Mapping) or feat.get("type", "Feature") != "Feature":
            raise AnnotationError(f"feature {i}: not a GeoJSON Feature")
        props = feat.get("properties") or {}
        if not isinstance(props, Mapping):
            raise AnnotationError(f"feature {i}: 'properties' is not an object")
        name = props.get("name")
        name = str(name) if name is not None else str(feat.get("id", f"feature {i}"))
        where = f"feature {i} ({name!r})"
        object_type = str(props.get("objectType", "annotation")).lower()
        if object_type in _QUPATH_NON_ANNOTATIONS:
            warnings.append(f"{where}: a QuPath {object_type}, not an annotation, skipped")
            continue
        geom = _geojson_geometry(feat.get("geometry"), where, warnings)
        if geom is None:
            continue
        cls_name = _classification_name(props)
        if cls_name is not None:
            label = normalize_label(cls_name)
        else:
            prop_name = props.get("name")
            label = _known_label(prop_name if isinstance(prop_name, str) else None) or TUMOR
        author = props.get("author")
        contours.append(
            Contour(
                geometry=geom,
                label=label,
                name=name,
                author=str(author) if author is not None else None,
                source=FORMAT_GEOJSON,
            )
        )
    return AnnotationSet(tuple(contours), FORMAT_GEOJSON, tuple(warnings))


def _ring_list(coords: Iterable[Sequence[float]]) -> list[list[float]]:
    return [[float(x), float(y)] for x, y, *_ in coords]


def _geometry_to_geojson(geom: Geometry) -> dict[str, Any]:
    def poly(p: Polygon) -> list[list[list[float]]]:
        return [_ring_list(p.exterior.coords)] + [_ring_list(h.coords) for h in p.interiors]

    if isinstance(geom, Polygon):
        return {"type": "Polygon", "coordinates": poly(geom)}
    return {"type": "MultiPolygon", "coordinates": [poly(p) for p in geom.geoms]}


def to_geojson(annset: AnnotationSet) -> dict[str, Any]:
    """A QuPath-compatible GeoJSON FeatureCollection of the contours (coordinates kept exact)."""
    features = []
    for c in annset.contours:
        props: dict[str, Any] = {
            "objectType": "annotation",
            "name": c.name,
            "classification": {
                "name": _EXPORT_NAMES.get(c.label, c.label),
                "color": _QUPATH_COLORS.get(c.label, [255, 200, 0]),
            },
        }
        if c.author is not None:
            props["author"] = c.author
        features.append(
            {"type": "Feature", "geometry": _geometry_to_geojson(c.geometry), "properties": props}
        )
    return {"type": "FeatureCollection", "features": features}


# -- CAMELYON16 JSON ----------------------------------------------------------------------------


def parse_camelyon_json(
    data: str | bytes | Mapping[str, Any], *, negative_label: str | None = None
) -> AnnotationSet:
    """Read the CAMELYON16 JSON conversion ``{"positive": [...], "negative": [...]}``.

    Each entry is ``{"name", "vertices": [[x, y], ...]}``. Positive polygons are tumor. Negative
    polygons are exclusions (holes in the tumor) in a file that has positive polygons, and normal
    regions in one that has none (``Normal_*`` files); ``negative_label`` overrides that.
    """
    obj = _load_json(data) if isinstance(data, (str, bytes)) else data
    if not isinstance(obj, Mapping) or not ({"positive", "negative"} & set(obj)):
        raise AnnotationError("not CAMELYON JSON: expected an object with 'positive'/'negative'")
    positive = obj.get("positive", [])
    negative = obj.get("negative", [])
    if not isinstance(positive, list) or not isinstance(negative, list):
        raise AnnotationError("CAMELYON JSON: 'positive' and 'negative' must be lists")
    if negative_label is None:
        negative_label = EXCLUSION if positive else NORMAL
    warnings: list[str] = []
    contours: list[Contour] = []
    for key, entries, label in (("positive", positive, TUMOR), ("negative", negative, None)):
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or "vertices" not in entry:
                raise AnnotationError(f"{key}[{i}]: expected an object with 'vertices'")
            name = str(entry.get("name", f"{key} {i}"))
            where = f"{key}[{i}] ({name!r})"
            arr = _ring_array(entry["vertices"], where)
            geom = _validated(_polygon(arr, [], where), where, warnings)
            contours.append(
                Contour(
                    geometry=geom,
                    label=label or negative_label,
                    name=name,
                    source=FORMAT_CAMELYON_JSON,
                )
            )
    return AnnotationSet(tuple(contours), FORMAT_CAMELYON_JSON, tuple(warnings))


# -- XML ----------------------------------------------------------------------------------------

_DOCTYPE_RE = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


def _parse_xml(data: str | bytes) -> ET.Element:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    # Annotation files never declare entities; refusing them rules out entity-expansion attacks
    # whatever the XML parser's own limits.
    if _DOCTYPE_RE.search(raw[:4096]) or b"<!ENTITY" in raw:
        raise AnnotationError("XML with a DOCTYPE or entity declarations is not accepted")
    try:
        return ET.fromstring(raw)
    except ET.ParseError as exc:
        raise AnnotationError(f"malformed XML: {exc}") from exc


def _xml_float(value: str | None, what: str, where: str) -> float:
    if value is None:
        raise AnnotationError(f"{where}: missing {what}")
    text = value.strip()
    # Some CAMELYON XML files were written with a decimal comma.
    if "," in text and "." not in text:
        text = text.replace(",", ".")
    try:
        out = float(text)
    except ValueError as exc:
        raise AnnotationError(f"{where}: {what}={value!r} is not a number") from exc
    if not math.isfinite(out):
        raise AnnotationError(f"{where}: {what}={value!r} is not finite")
    return out


def _asap_label(group: str | None, where: str, warnings: list[str]) -> str:
    if group is None or group.strip() in ("", "None"):
        warnings.append(f"{where}: no group, taken as tumor")
        return TUMOR
    return normalize_label(group)


def parse_asap_xml(data: str | bytes) -> AnnotationSet:
    """Read ASAP XML (CAMELYON16/17): ``_0``, ``_1``, ``Tumor`` are tumor; ``_2``,
    ``Exclusion`` are exclusion regions subtracted from the tumor.

    Polygon, Spline (its control points) and Rectangle annotations are areas; Dot, PointSet and
    measurements are skipped with a warning.
    """
    return _asap_from_root(_parse_xml(data))


def _asap_from_root(root: ET.Element) -> AnnotationSet:
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"not ASAP XML: root element <{root.tag}>")
    warnings: list[str] = []
    contours: list[Contour] = []
    container = root.find("Annotations")
    annotations = [] if container is None else container.findall("Annotation")
    for i, ann in enumerate(annotations):
        name = ann.get("Name") or f"Annotation {i}"
        where = f"annotation {i} ({name!r})"
        atype = (ann.get("Type") or "Polygon").strip()
        if atype not in ("Polygon", "Spline", "Rectangle"):
            warnings.append(f"{where}: a {atype} has no area, skipped")
            continue
        if atype == "Spline":
            warnings.append(f"{where}: spline approximated by its control points")
        coords_el = ann.find("Coordinates")
        coord_els = [] if coords_el is None else coords_el.findall("Coordinate")
        points: list[tuple[float, float, float]] = []
        for j, c in enumerate(coord_els):
            cw = f"{where}, coordinate {j}"
            order = c.get("Order")
            points.append(
                (
                    _xml_float(order, "Order", cw) if order is not None else float(j),
                    _xml_float(c.get("X"), "X", cw),
                    _xml_float(c.get("Y"), "Y", cw),
                )
            )
        if not points:
            raise AnnotationError(f"{where}: no coordinates")
        # The Order attribute, not document order, is ASAP's vertex order; the sort is stable.
        points.sort(key=lambda p: p[0])
        arr = np.asarray([(x, y) for _, x, y in points], dtype=np.float64)
        geom = _validated(_polygon(arr, [], where), where, warnings)
        contours.append(
            Contour(
                geometry=geom,
                label=_asap_label(ann.get("PartOfGroup"), where, warnings),
                name=name,
                source=FORMAT_ASAP_XML,
            )
        )
    return AnnotationSet(tuple(contours), FORMAT_ASAP_XML, tuple(warnings))


def _xml_number(v: float) -> str:
    # repr round-trips a float exactly; integral values are written without ".0" like ASAP does.
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def to_asap_xml(annset: AnnotationSet) -> str:
    """The contours as ASAP XML (coordinates exact).

    ASAP has one ring per annotation: each polygon of a contour becomes an annotation in the
    group of its label (``Tumor``, ``Exclusion``, ...), and the holes of tumor polygons become
    ``Exclusion`` annotations, which reads back as the same tumor geometry. Holes in a region of
    another class cannot be written and raise :class:`AnnotationError`.
    """
    root = ET.Element("ASAP_Annotations")
    anns = ET.SubElement(root, "Annotations")
    groups: dict[str, str] = {}

    def add(name: str, label: str, coords: Sequence[tuple[float, ...]]) -> None:
        group = _EXPORT_NAMES.get(label, label)
        groups.setdefault(group, _ASAP_COLORS.get(label, "#FFAA00"))
        el = ET.SubElement(
            anns,
            "Annotation",
            {
                "Name": name,
                "Type": "Polygon",
                "PartOfGroup": group,
                "Color": _ASAP_COLORS.get(label, "#FFAA00"),
            },
        )
        cel = ET.SubElement(el, "Coordinates")
        pts = list(coords)
        if len(pts) > 1 and pts[0] == pts[-1]:
            pts = pts[:-1]  # ASAP rings are implicitly closed
        for k, (x, y, *_) in enumerate(pts):
            ET.SubElement(
                cel, "Coordinate", {"Order": str(k), "X": _xml_number(x), "Y": _xml_number(y)}
            )

    for c in annset.contours:
        polys = list(c.geometry.geoms) if isinstance(c.geometry, MultiPolygon) else [c.geometry]
        for k, p in enumerate(polys):
            pname = c.name if len(polys) == 1 else f"{c.name} part {k}"
            add(pname, c.label, list(p.exterior.coords))
            if p.interiors and c.label != TUMOR:
                raise AnnotationError(
                    f"contour {c.name!r}: ASAP XML cannot hold holes in a {c.label!r} region"
                )
            for h, hole in enumerate(p.interiors):
                add(f"{pname} hole {h}", EXCLUSION, list(hole.coords))
    groups_el = ET.SubElement(root, "AnnotationGroups")
    for gname, color in groups.items():
        g = ET.SubElement(
            groups_el, "Group", {"Name": gname, "PartOfGroup": "None", "Color": color}
        )
        ET.SubElement(g, "Attributes")
    ET.indent(root, space="\t")
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _ellipse(arr: npt.NDArray[np.float64]) -> Polygon:
    (x0, y0), (x1, y1) = arr[0], arr[-1]
    circle = shapely.Point(0.0, 0.0).buffer(1.0, quad_segs=32)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    rx, ry = abs(x1 - x0) / 2.0, abs(y1 - y0) / 2.0
    coords = shapely.get_coordinates(circle) * [rx, ry] + [cx, cy]
    return Polygon(coords)


def parse_imagescope_xml(data: str | bytes) -> AnnotationSet:
    """Read Aperio ImageScope XML: ``<Annotations><Annotation><Regions><Region>``.

    Regions with ``NegativeROA="1"`` are exclusions (holes). The label is the annotation layer's
    name when it is a class name ("Tumor", "Normal", ...), else tumor. Rectangles are areas,
    ellipses are approximated by a 128-gon (warning); arrows and rulers are skipped.
    """
    return _imagescope_from_root(_parse_xml(data))


def _imagescope_from_root(root: ET.Element) -> AnnotationSet:
    if root.tag != "Annotations":
        raise AnnotationError(f"not ImageScope XML: root element <{root.tag}>")
    warnings: list[str] = []
    contours: list[Contour] = []
    for i, ann in enumerate(root.findall("Annotation")):
        layer = ann.get("Name") or ""
        description = None
        for attr in ann.findall("Attributes/Attribute"):
            if (attr.get("Name") or "").lower() == "description":
                description = attr.get("Value")
        label = _known_label(layer) or _known_label(description) or TUMOR
        for j, region in enumerate(ann.findall("Regions/Region")):
            rname = region.get("Text") or f"{layer or f'Annotation {i}'} region {j}"
            where = f"annotation {i}, region {j} ({rname!r})"
            rtype = (region.get("Type") or "0").strip()
            if rtype in _IMAGESCOPE_NON_AREA:
                warnings.append(f"{where}: a {_IMAGESCOPE_NON_AREA[rtype]} has no area, skipped")
                continue
            vertex_els = region.findall("Vertices/Vertex")
            pts = [
                (
                    _xml_float(v.get("X"), "X", f"{where}, vertex {k}"),
                    _xml_float(v.get("Y"), "Y", f"{where}, vertex {k}"),
                )
                for k, v in enumerate(vertex_els)
            ]
            if not pts:
                raise AnnotationError(f"{where}: no vertices")
            arr = np.asarray(pts, dtype=np.float64)
            if rtype == "2":
                if len(arr) < 2:
                    raise AnnotationError(f"{where}: an ellipse needs two corner vertices")
                warnings.append(f"{where}: ellipse approximated by a polygon")
                poly = _ellipse(arr)
            else:
                poly = _polygon(arr, [], where)
            geom = _validated(poly, where, warnings)
            negative = (region.get("NegativeROA") or "0").strip() == "1"
            contours.append(
                Contour(
                    geometry=geom,
                    label=EXCLUSION if negative else label,
                    name=rname,
                    source=FORMAT_IMAGESCOPE_XML,
                )
            )
    return AnnotationSet(tuple(contours), FORMAT_IMAGESCOPE_XML, tuple(warnings))


# -- files --------------------------------------------------------------------------------------


def _parse_any(data: bytes) -> AnnotationSet:
    head = data.lstrip()
    if head.startswith(b"<"):
        root = _parse_xml(data)
        if root.tag == "ASAP_Annotations":
            return _asap_from_root(root)
        if root.tag == "Annotations":
            return _imagescope_from_root(root)
        raise AnnotationError(f"unknown XML contour format: root element <{root.tag}>")
    if head.startswith((b"{", b"[")):
        obj = _load_json(data)
        if isinstance(obj, Mapping) and "type" not in obj and {"positive", "negative"} & set(obj):
            return parse_camelyon_json(obj)
        return parse_geojson(obj)
    raise AnnotationError("not a contour file: neither JSON nor XML")


def parse_annotations(data: str | bytes) -> AnnotationSet:
    """Parse a contour file's content in any supported format, detected from the content."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if not raw.strip():
        raise AnnotationError("the file is empty")
    return _parse_any(raw)


def read_annotations(path: str | Path) -> AnnotationSet:
    """Read a contour file of any supported format, detected from its content."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_ANNOTATION_FILE_BYTES:
            raise AnnotationError(
                f"{p.name}: {size} bytes, more than the {MAX_ANNOTATION_FILE_BYTES} allowed "
                "for a contour file"
            )
        data = p.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{p.name}: cannot read the file ({exc.strerror})") from exc
    try:
        return parse_annotations(data)
    except AnnotationError as exc:
        raise AnnotationError(f"{p.name}: {exc.message}", details=exc.details) from exc


_ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")


def match_slide_name(annotation_filename: str, slide_filenames: Iterable[str]) -> str | None:
    """The slide a contour file belongs to, by name, or None if none or several match.

    ``<slide file name>.geojson`` (QuPath: ``Tumor_001.tif.geojson``) and ``<slide stem>.xml``,
    ``<slide stem>.json`` or ``<slide stem>.geojson`` (``tumor_001.xml``) match, ignoring case and
    folders. A full-name match wins over a stem match.
    """
    base = PurePath(annotation_filename.replace("\\", "/")).name.lower()
    key = None
    for suffix in _ANNOTATION_SUFFIXES:
        if base.endswith(suffix):
            key = base[: -len(suffix)]
            break
    if not key:
        return None
    full: list[str] = []
    stem: list[str] = []
    for slide in slide_filenames:
        sname = PurePath(slide.replace("\\", "/")).name.lower()
        if sname == key:
            full.append(slide)
        elif PurePath(sname).stem == key:
            stem.append(slide)
    for matches in (full, stem):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            return None  # ambiguous: several slides share the name
    return None
