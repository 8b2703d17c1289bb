"""Data pipeline: documents from files or the hub (`sources`), document-aware packing into aligned rows
(`packing`), and the sharded, checkpointable training stream (`stream`)."""

from dsv4.data.packing import PackedRow, count_rows, pack_documents, row_loss_weights
from dsv4.data.sources import documents_text, load_documents, render_chat
from dsv4.data.stream import PackedStream, tokenize_dataset
from dsv4.errors import DataError

__all__ = ["DataError", "PackedRow", "PackedStream", "count_rows", "documents_text", "load_documents",
           "pack_documents", "render_chat", "row_loss_weights", "tokenize_dataset"]
