"""Keeping a trained model: every table of a cluster written to one ``.npz`` or ``.safetensors`` file.

:func:`~worker.export.cluster.fetch_tables` reads the tables from running shards (a
read-only client: it never joins the quorum); :func:`~worker.export.model_file.write_model`
writes them atomically; :func:`export_model` does both (``ps-admin export``,
``ps-launch --save``). The file's layout is documented in :mod:`worker.export.model_file`.
"""

from worker.export.cluster import export_model, fetch_tables
from worker.export.model_file import FORMATS, ids_key, rows_key, write_model

__all__ = ["FORMATS", "export_model", "fetch_tables", "ids_key", "rows_key", "write_model"]
