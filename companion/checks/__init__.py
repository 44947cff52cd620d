"""Self-checks for the exercises: `check_<chapter>_<n>(your_function)` passes or raises a hint."""
from . import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11
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
from .ch11 import *  # noqa: F403

# A new chapter adds its module to the two lists above and to this tuple.
_CHAPTERS = (ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11)
__all__ = ["ExerciseFailed", *(name for chapter in _CHAPTERS for name in chapter.__all__)]
