"""Helpers for the course "Save, Load, Resume: PyTorch checkpoints and GPU training".

Lessons teach the mechanics inline first; these helpers exist so that later lessons don't
repeat earlier ones. Modules:

- ``helpers.config``       the course's repository URL and the Colab links built from it
- ``helpers.environment``  seeding, device choice, Colab detection, the ``runs/`` folders
- ``helpers.data``         the offline UCI digits data set, splits and DataLoaders
- ``helpers.models``       the small models the lessons share
- ``helpers.training``     a plain training step, epoch and evaluation
- ``helpers.checks``       exercise checks (``ex.q1.check(...)``, ``ex.q1.hint()``)
- ``helpers.exercises``    one module of checks per lesson
- ``helpers.generate``     the generator: ``solutions/`` -> ``notebooks/`` (``make notebooks``)
"""

__version__ = "0.1.0"
