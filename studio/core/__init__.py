"""The Qt-free core: recipes, GPUs, quantization, models, memory, data, engine, bundles.

Nothing here imports PySide6, pyqtgraph or studio.ui (an import-linter contract), and heavy
libraries (torch, transformers, peft, bitsandbytes, datasets) are imported inside functions
only, so importing any studio.core module stays cheap.
"""
