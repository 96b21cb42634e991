"""Layer pruning (LAPTOP-Diff): enumerate the U-Net's removable units, score each once (output loss, or the
magnitude / Taylor / random criteria it is compared with), choose the set for a budget by exact knapsack, and
remove it physically; plus the handcrafted BK-SDM presets."""

from diffprune.formats import StructureFormat, register_structure_format

from .additivity import AdditivityResult, additivity, plot_additivity
from .criterion import CRITERIA, CalibrationSet, LayerCalibrationConfig, output_loss, record_calibration, score_units
from .presets import PRESETS, build_preset
from .prune import BUDGETS, LayerPruneResult, LayerPruningConfig, apply_preset, plan, prune
from .select import SOLVERS, greedy_cover, knapsack_min_cover, select
from .storage import FORMAT, is_layer_pruned, is_layer_pruned_folder, is_layer_pruned_unet, load_unet, save_unet
from .surgery import remove_units, units_removed
from .units import GRANULARITIES, Unit, enumerate_units, removable_units

register_structure_format(StructureFormat(name=FORMAT, applies=is_layer_pruned_unet, save=save_unet,
                                          detect=is_layer_pruned_folder, load=load_unet))

__all__ = ["AdditivityResult", "additivity", "plot_additivity", "removable_units", "BUDGETS", "apply_preset", "CRITERIA", "GRANULARITIES", "PRESETS", "SOLVERS", "CalibrationSet", "LayerCalibrationConfig",
           "LayerPruneResult", "LayerPruningConfig", "Unit", "build_preset", "enumerate_units", "greedy_cover",
           "is_layer_pruned", "knapsack_min_cover", "load_unet", "output_loss", "plan", "prune",
           "record_calibration", "remove_units", "save_unet", "score_units", "select", "units_removed"]
