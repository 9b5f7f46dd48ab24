"""Report plumbing of the chapters: tables, figures and glue that a reader does not need to see.

One module per chapter (``medad.reports.<chapter>``); the notebooks call them from
cells tagged ``remove-input`` or ``hide-input``. Importing the package applies the book's
figure style (:mod:`medad.reports.style`): every chapter imports it before drawing.
"""
from medad.reports import style as _style

_style.use()
