"""Configuration of the ``instances`` stage (one section of :class:`vid2scene.config.PipelineConfig`).

The labeller is a backend (docs/architecture.md, "Plugin shape"): ``captioner`` names it in
:data:`vid2scene.instances.labellers.BACKENDS` and each labeller with options has its own nested section,
``instances: {captioner: openai, openai: {base_url: …, model: …}}``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..stage import known_backend
from .labellers import BACKENDS, OpenAICompatLabeller
from .maskers import MASKERS, SamMasker


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plane_margin_m: float = Field(0.05, ge=0, description="vertices this close to a layout plane are removed")
    seg_k: float = Field(0.01, gt=0, description="Felzenszwalb threshold constant k (ScanNet kThresh)")
    seg_min_vertices: int = Field(20, ge=1, description="smallest segment (ScanNet segMinVerts)")
    work_size: int = Field(320, ge=32, description="long side (pixels) of the occlusion ray-cast")
    occlusion_tol_rel: float = Field(0.05, ge=0, description="a vertex is occluded if farther than the surface "
                                     "by more than this share of the depth ...")
    occlusion_tol_m: float = Field(0.04, ge=0, description="... plus this many metres")
    min_visible_vertices: int = Field(8, ge=1)
    min_inside: float = Field(0.6, gt=0, le=1, description="share of a segment's visible vertices in a box")
    box_margin_rel: float = Field(0.05, ge=0, description="boxes grown by this share of their size per side")
    depth_band_rel: float = Field(0.5, ge=0)
    depth_band_m: float = Field(0.3, ge=0)
    min_segment_support: float = Field(0.3, ge=0, le=1, description="assigned views / seen views of a segment")
    merge_ratio: float = Field(0.5, gt=0, le=1)
    min_views: int = Field(3, ge=1, description="instances supported by fewer keyframes are dropped")
    min_view_iou: float = Field(0.2, ge=0, le=1, description="a view supports an instance only if the projected box "
                                "of its visible vertices has at least this IoU with the detection")
    dup_gap_m: float = Field(0.1, ge=0, description="same-label instances this close may be one object")
    cluster_gap_m: float = Field(0.1, gt=0, description="segments of an instance farther than this from its "
                                 "largest spatial cluster are dropped")
    floor_snap_m: float = Field(0.1, ge=0, description="box bottoms this close to the floor are set to z = 0")
    prior_min_score: float = Field(0.5, ge=0, le=1, description="instances used for the object-size scale")
    prior_min_views: int = Field(3, ge=1)
    prior_min_iou: float = Field(0.4, ge=0, le=1, description="median view IoU of instances used for the scale")
    method: str = Field("masks", description="'masks': per-view detection masks lifted to 3D and clustered "
                        "across views (instances.lifting); 'segments': mesh segments assigned to boxes "
                        "(instances.consensus)")
    fg_gap_rel: float = Field(0.08, ge=0, description="a box's depth layers split at gaps larger than this share "
                              "of the depth ...")
    fg_gap_m: float = Field(0.08, ge=0, description="... plus this many metres")
    mask_min_points: int = Field(15, ge=1, description="smallest per-view mask (visible mesh points)")
    link_min_points: int = Field(10, ge=1, description="points one view must see of another view's mask for "
                                 "the pair to be compared")
    merge_score: float = Field(0.5, gt=0, le=1, description="average consistency for two mask groups to merge")
    merge_score_low: float = Field(0.35, gt=0, le=1, description="weaker average consistency at which a mask "
                                   "group of fewer than min_views masks joins its best-linked group (hysteresis)")
    point_share: float = Field(0.5, gt=0, le=1, description="a point belongs to a group when this share of the "
                               "group's masks whose view sees it hold it")
    min_instance_points: int = Field(30, ge=1, description="instances with fewer mesh points are dropped")
    label_overlap: float = Field(0.5, gt=0, le=1, description="a group whose points have at least this IoU with "
                                 "those of a stronger group of another label is the same object (its votes join "
                                 "it)")
    nested_share: float = Field(0.8, gt=0, le=1, description="a group with at least this share of its points "
                                "inside a stronger group of another label that is not a support surface is part "
                                "of that object (its votes join it)")
    support_overhang_m: float = Field(0.12, ge=0, description="a bottom or back layer reaching this far beyond "
                                      "the rest of the object is its support (table top, wall) and is removed")
    unseen_gap_m: float = Field(0.05, gt=0, description="an instance grows into object points no keyframe sees "
                                "that lie this close to it (and to each other)")
    relax_min_keyframes: int = Field(5, ge=1, description="a label detected in this many keyframes whose masks "
                                     "form no group gets a second pass with looser thresholds (instances.masks."
                                     "relaxed)")
    extra_wall_min_width_m: float = Field(1.5, ge=0, description="'masks' method: vertical planes at least this "
                                          "wide (and extra_wall_min_height_m tall) that the layout lacks are walls "
                                          "and removed (0 = off)")
    extra_wall_min_height_m: float = Field(1.4, ge=0)
    footprint_tolerance: float = Field(1.1, ge=1, description="an instance whose footprint exceeds this × its "
                                       "label's largest plausible one (instances.scale.MAX_FOOTPRINT_M) is "
                                       "rejected")
    footprint_band: float = Field(1.5, ge=1, description="an instance whose footprint exceeds the limit of "
                                  "footprint_tolerance by less than this factor is cut to a plausible core instead "
                                  "of rejected (instances.masks.footprint_core)")
    masker: str = Field("none", description="2D masks inside the boxes for the 'masks' method: " + ", ".join(MASKERS))
    sam: SamMasker.Options = Field(default_factory=SamMasker.Options, description="options of the 'sam' masker")
    captioner: str = Field("none", description="labeller backend for captions: " + ", ".join(BACKENDS))
    openai: OpenAICompatLabeller.Options = Field(default_factory=OpenAICompatLabeller.Options,
                                                 description="options of the 'openai' labeller")
    caption_max_instances: int = Field(50, ge=0)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in ("masks", "segments"):
            raise ValueError(f"unknown instances method {v!r}: one of masks, segments")
        return v

    @field_validator("masker")
    @classmethod
    def _known_masker(cls, v: str) -> str:
        return known_backend(v, MASKERS, "instances masker")

    @field_validator("captioner")
    @classmethod
    def _known_captioner(cls, v: str) -> str:
        return known_backend(v, BACKENDS, "instances labeller")
