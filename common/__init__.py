"""Django-free code shared by every part of TumorMap (the exception hierarchy, limits)."""
