"""The shapes testbed: a procedural world with exact ground truth, for measuring quality offline on a CPU."""

from .world import Scene, ShapeObject, render, sample_scene, single_object_scenes, split_of

__all__ = ["Scene", "ShapeObject", "render", "sample_scene", "single_object_scenes", "split_of"]
