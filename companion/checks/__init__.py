"""Self-checks for the exercises: `check_<chapter>_<n>(your_function)` prints a pass or raises a hint."""
from . import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10
from ._core import ExerciseFailed
from .ch01 import *  # noqa: F403 - each chapter module lists its checks in __all__
from .ch02 import *  # noqa: F403
from .ch03 import *  # noqa: F403
from .ch04 import *  # noqa: F403
from .ch05 import *  # noqa: F403
from .ch06 import *  # noqa: F403
from .ch07 import *  # noqa: F403
from .ch08 import *  # noqa: F403
from .ch09 import *  # noqa: F403
from .ch10 import *  # noqa: F403

__all__ = ["ExerciseFailed", *ch01.__all__, *ch02.__all__, *ch03.__all__, *ch04.__all__, *ch05.__all__, *ch06.__all__, *ch07.__all__, *ch08.__all__, *ch09.__all__, *ch10.__all__]
