"""The IR stage: the op table (ops.py), and later the graph, its printing, verification and passes."""
