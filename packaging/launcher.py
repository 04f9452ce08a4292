"""Entry script of the PyInstaller build: the same program as ``qlora-studio``."""

import multiprocessing
import sys

from studio.cli import main

if __name__ == "__main__":
    # The engine runs in a spawn child process; a frozen program must route that child here.
    multiprocessing.freeze_support()
    sys.exit(main())
