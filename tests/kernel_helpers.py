"""A library that shows whether it was ever loaded, for the kernel caches' trust tests."""

import subprocess

PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
  FILE* f = fopen(MARKER, "w");
  if (f) fclose(f);
}
"""


def plant_library(library, marker, tmp_path):
    """A library whose constructor writes `marker` when it is loaded, where the kernels'
    library belongs."""
    source = tmp_path / 'planted.c'
    source.write_text(PLANTED.replace('MARKER', f'"{marker}"'))
    library.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(['gcc', '-shared', '-fPIC', str(source), '-o', str(library)], check=True)
