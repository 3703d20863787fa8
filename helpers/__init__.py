"""Helpers for the course "Save, Load, Resume: PyTorch checkpoints and GPU training".

Lessons teach the mechanics inline first; these helpers exist so that later lessons don't
repeat earlier ones. Modules:

- ``helpers.config``       the course's repository URL and the Colab links built from it
- ``helpers.environment``  seeding, device choice, Colab detection, the ``runs/`` folders
- ``helpers.data``         the offline UCI digits data set, splits and DataLoaders
- ``helpers.models``       the small models the lessons share
- ``helpers.training``     a plain training step, epoch and evaluation
- ``helpers.checkpointing`` crash-safe saves, RNG capture, exact resume, and a manager that
  rotates checkpoints (lesson 03)
- ``helpers.checkpoint_files`` reading and diagnosing checkpoint files: formats, CRC-32 of every
  record, truncation, safetensors and sharded files, friendly load errors
- ``helpers.doctor``       the checkpoint doctor: ``python -m helpers.doctor PATH`` says what a file
  holds, whether it is whole, and prints the code that loads it (lesson 04, TROUBLESHOOTING.md)
- ``helpers.resume_demo``  lesson 03's demo machinery: the run it interrupts and resumes, a
  fresh-process resume, a process killed with SIGKILL in the middle of a save
- ``helpers.state_dicts``  load weights saved from DataParallel, DDP, ``torch.compile`` or nested
  checkpoints into a plain model (lesson 04)
- ``helpers.measure``      activation memory (``saved_tensors_hooks``), timing done right on CPU
  and GPU, GPU peak memory (lessons 05 and 06)
- ``helpers.gpu_reference`` reference figures measured on a real GPU, for runs without one
- ``helpers.pretrained``   the course's own pretrained backbone, and the optional ImageNet VGG19
  (lesson 07)
- ``helpers.large_checkpoints`` saving and loading large checkpoints measured against the disk:
  time, peak memory, share of the disk's speed (lesson 08, ``scripts/benchmark_large_checkpoints.py``)
- ``helpers.checks``       exercise checks (``ex.q1.check(...)``, ``ex.q1.hint()``)
- ``helpers.exercises``    one module of checks per lesson
- ``helpers.generate``     the generator: ``solutions/`` -> ``notebooks/`` (``make notebooks``)
- ``helpers.grade``        the grader: ``python -m helpers.grade SUBMISSION.ipynb`` (see INSTRUCTORS.md)
- ``helpers.grade_recheck`` what the grader runs in a submission's kernel to re-check its answers
"""

__version__ = "0.1.0"
