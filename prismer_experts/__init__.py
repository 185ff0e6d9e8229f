"""Prismer's built-in experts. Each module is a plugin declared in the ``prismer`` entry-point
group of this distribution's pyproject, exactly as a third-party package would declare one."""
