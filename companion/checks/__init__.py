"""Self-checks for the exercises: `check_<chapter>_<n>(your_function)` prints a pass or raises a hint."""
from ._core import ExerciseFailed
from .ch01 import check_1_1, check_1_2, check_1_3
from .ch03 import check_3_1, check_3_2, check_3_3

__all__ = ["ExerciseFailed", "check_1_1", "check_1_2", "check_1_3", "check_3_1", "check_3_2", "check_3_3"]
