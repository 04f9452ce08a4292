"""The desktop window (PySide6 + pyqtgraph): the only package that imports Qt.

Nothing here imports torch or transformers at import time or while the window is built;
heavy work (reading a model's shape, converting the built-in model, loading a tokenizer, chat)
runs in a helper process (`studio.core.helper`, so that it never holds this process's GIL)
waited on by background threads (`studio.ui.background`) that report back through Qt signals.
"""
