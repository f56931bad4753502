"""Result layers: which GeoPackage layers to load, their styles, and one layer-tree group per run.

Processing adds the layers to the project on the main thread after the
algorithm finished and then calls :class:`RunLayerStyler` for each of them; it
styles the layer (by class) and moves it into the run's group.
"""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsProcessingContext,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingUtils,
    QgsProject,
    QgsRendererCategory,
    QgsRuleBasedRenderer,
    QgsSingleSymbolRenderer,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

RESULT_LAYERS = ("detections", "instances", "segmentation", "tiles", "tile_cores")
"""GeoPackage layers loaded into the project, top to bottom in the run's group."""

# Distinct colours for classes without a colour in the model metadata (class index order).
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000")


def class_colours(metadata: dict | None, classes: list[str]) -> dict[str, QColor]:
    """Colour per class name: the model metadata's colours when it has them, else :data:`PALETTE`.

    Accepted metadata forms: ``class_colors``/``class_colours``/``colors``/``colours``/``palette`` as
    ``{"name": "#rrggbb" | [r, g, b]}`` or a list in ``classes`` order.
    """
    meta = metadata or {}
    model_classes = list(meta.get("classes") or [])
    order = model_classes + [c for c in classes if c not in model_classes]
    given: dict[str, object] = {}
    for key in ("class_colors", "class_colours", "colors", "colours", "palette"):
        raw = meta.get(key)
        if isinstance(raw, dict):
            given = {str(k): v for k, v in raw.items()}
            break
        if isinstance(raw, list):
            given = dict(zip(model_classes, raw))  # noqa: B905 (Python 3.9 in QGIS 3.22; short lists are fine)
            break
    out = {}
    for i, name in enumerate(order):
        c = _colour(given.get(name))
        out[name] = c if c is not None else QColor(PALETTE[i % len(PALETTE)])
    return out


def _colour(value) -> QColor | None:
    if isinstance(value, str) and QColor(value).isValid():
        return QColor(value)
    if isinstance(value, (list, tuple)) and len(value) in (3, 4):
        return QColor(*[int(v) for v in value])
    return None


def _symbol(layer_name: str, colour: QColor) -> QgsFillSymbol:
    rgb = f"{colour.red()},{colour.green()},{colour.blue()}"
    if layer_name == "detections":  # outlined boxes: the image stays visible
        return QgsFillSymbol.createSimple({"style": "no", "outline_color": rgb + ",255", "outline_width": "0.5"})
    if layer_name == "instances":  # filled, semi-transparent masks
        return QgsFillSymbol.createSimple({"color": rgb + ",110", "outline_color": rgb + ",230",
                                           "outline_width": "0.26"})
    return QgsFillSymbol.createSimple({"color": rgb + ",150", "outline_style": "no"})  # segmentation


def style_layer(layer: QgsVectorLayer, layer_name: str, metadata: dict | None = None) -> None:
    """Style one geors result layer: categorized by ``class`` for objects, outlines for tile grids."""
    if layer_name in ("tiles", "tile_cores"):
        dash = "dash" if layer_name == "tiles" else "solid"
        colour = "120,120,120,255" if layer_name == "tiles" else "255,200,0,255"
        layer.setRenderer(QgsSingleSymbolRenderer(QgsFillSymbol.createSimple(
            {"style": "no", "outline_color": colour, "outline_style": dash, "outline_width": "0.4"})))
        layer.triggerRepaint()
        return
    field = "class"
    idx = layer.fields().indexOf(field)
    if idx < 0:
        return
    classes = sorted(str(v) for v in layer.uniqueValues(idx) if v is not None)
    colours = class_colours(metadata, classes)
    names = [c for c in colours if c in classes] + [c for c in (metadata or {}).get("classes") or []
                                                    if c not in classes]
    if layer_name == "detections" and layer.fields().indexOf(PASSES_FIELD) >= 0:
        layer.setRenderer(_threshold_renderer(names, colours))
        layer.triggerRepaint()
        return
    cats = [QgsRendererCategory(name, _symbol(layer_name, colours[name]), name) for name in names]
    layer.setRenderer(QgsCategorizedSymbolRenderer(field, cats))
    layer.triggerRepaint()


PASSES_FIELD = "passes_threshold"
"""Detections written below the score threshold (``geors detect --min-score``) have 0 here."""

BELOW_THRESHOLD_LABEL = "below the score threshold (kept for AP; tick to show)"


def _threshold_renderer(names: list[str], colours: dict) -> QgsRuleBasedRenderer:
    """Detections by class for boxes that pass the score threshold; one grey, dotted rule, unticked
    (hidden until the user ticks it in the legend), for the boxes written below it with --min-score."""
    root = QgsRuleBasedRenderer.Rule(None)
    for name in names:
        quoted = name.replace("'", "''")
        root.appendChild(QgsRuleBasedRenderer.Rule(
            _symbol("detections", colours[name]), 0, 0,
            f"\"class\" = '{quoted}' AND coalesce(\"{PASSES_FIELD}\", 1) = 1", name))
    grey = QgsFillSymbol.createSimple({"style": "no", "outline_color": "150,150,150,255", "outline_style": "dot",
                                       "outline_width": "0.3"})
    below = QgsRuleBasedRenderer.Rule(grey, 0, 0, f"\"{PASSES_FIELD}\" = 0", BELOW_THRESHOLD_LABEL)
    below.setActive(False)
    root.appendChild(below)
    return QgsRuleBasedRenderer(root)


def layer_uri(gpkg: str, layer_name: str, run_id: str | None = None) -> str:
    """OGR URI of one GeoPackage layer, restricted to one run when ``run_id`` is given."""
    uri = f"{gpkg}|layername={layer_name}"
    if run_id:
        uri += f"|subset=\"run_id\" = '{run_id}'"
    return uri


def existing_result_layers(gpkg: str) -> list[str]:
    """The :data:`RESULT_LAYERS` present in ``gpkg`` (in display order)."""
    probe = QgsVectorLayer(gpkg, "probe", "ogr")
    if not probe.isValid():
        return []
    present = set()
    for sub in probe.dataProvider().subLayers():
        # "index!!::!!name!!::!!count!!::!!geometry type!!::!!..." (separator of QgsDataProvider.SUBLAYER_SEPARATOR)
        parts = sub.split("!!::!!")
        if len(parts) > 1:
            present.add(parts[1])
    return [n for n in RESULT_LAYERS if n in present]


class RunLayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles a result layer and moves it into the run's layer-tree group (main thread, after the run)."""

    _alive: list[RunLayerStyler] = []  # Processing keeps a raw pointer: Python must own these

    def __init__(self, layer_name: str, group: str, metadata: dict | None):
        super().__init__()
        self.layer_name, self.group, self.metadata = layer_name, group, metadata

    @classmethod
    def create(cls, layer_name: str, group: str, metadata: dict | None) -> RunLayerStyler:
        obj = cls(layer_name, group, metadata)
        cls._alive.append(obj)
        return obj

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API)
        if not isinstance(layer, QgsVectorLayer):
            return
        style_layer(layer, self.layer_name, self.metadata)
        project = context.project() or QgsProject.instance()
        move_to_group(project, layer, self.group, RESULT_LAYERS.index(self.layer_name)
                      if self.layer_name in RESULT_LAYERS else 99)


class LabelRasterStyler(QgsProcessingLayerPostProcessorInterface):
    """Colours a ``geors label`` raster by class id (its ``geors_classes`` tag); 255 = unlabelled stays clear."""

    _alive: list[LabelRasterStyler] = []

    def __init__(self, metadata: dict | None):
        super().__init__()
        self.metadata = metadata

    @classmethod
    def create(cls, metadata: dict | None) -> LabelRasterStyler:
        obj = cls(metadata)
        cls._alive.append(obj)
        return obj

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API)
        style_label_raster(layer, self.metadata)


def style_label_raster(layer, metadata: dict | None = None) -> None:
    """Paletted renderer: one colour per class id named in the raster's ``geors_classes`` metadata."""
    import json

    from osgeo import gdal
    from qgis.core import QgsPalettedRasterRenderer, QgsRasterLayer

    if not isinstance(layer, QgsRasterLayer):
        return
    ds = gdal.Open(layer.source().split("|")[0])
    raw = ds.GetMetadataItem("geors_classes") if ds is not None else None
    try:
        ids = {str(k): int(v) for k, v in json.loads(raw or "{}").items()}
    except (ValueError, TypeError, AttributeError):
        return
    if not ids:
        return
    colours = class_colours(metadata, sorted(ids, key=ids.get))
    classes = [QgsPalettedRasterRenderer.Class(v, colours[name], name) for name, v in sorted(ids.items(),
                                                                                         key=lambda kv: kv[1])]
    layer.setRenderer(QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes))
    layer.triggerRepaint()


def move_to_group(project: QgsProject, layer, group_name: str, rank: int) -> None:
    """Put ``layer``'s tree node into the group ``group_name`` (created on top), ordered by ``rank``."""
    root = project.layerTreeRoot()
    node = root.findLayer(layer.id())
    if node is None:
        return
    group = root.findGroup(group_name)
    if group is None:
        group = root.insertGroup(0, group_name)
    clone = node.clone()
    clone.setCustomProperty("geors/rank", rank)
    group.insertChildNode(0, clone)
    node.parent().removeChildNode(node)
    # keep the run's layers in RESULT_LAYERS order, whatever order Processing loads them in
    # (clones go in before the old nodes leave: a layer whose last node leaves the tree leaves the project)
    children = list(group.children())
    ranked = sorted(children, key=_rank)
    if [_rank(c) for c in ranked] != [_rank(c) for c in children]:
        for c in ranked:
            group.addChildNode(c.clone())
        for c in children:
            group.removeChildNode(c)


def _rank(node) -> int:
    value = node.customProperty("geors/rank")
    try:
        return int(value)
    except (TypeError, ValueError):
        return 99


def load_results_on_completion(context: QgsProcessingContext, gpkg: str, group: str, metadata: dict | None,
                               run_id: str | None, output_name: str = "OUTPUT") -> dict[str, str]:
    """Ask Processing to load the result layers of ``gpkg`` when the algorithm ends; returns name -> URI."""
    uris = {}
    for name in existing_result_layers(gpkg):
        uri = layer_uri(gpkg, name, run_id)
        details = QgsProcessingContext.LayerDetails(name, context.project(), output_name,
                                                    QgsProcessingUtils.LayerHint.Vector)
        details.forceName = True
        details.setPostProcessor(RunLayerStyler.create(name, group, metadata))
        context.addLayerToLoadOnCompletion(uri, details)
        uris[name] = uri
    return uris
